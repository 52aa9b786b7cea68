"""Prometheus metrics for one app (its own registry, so several apps in one process do not clash)."""

from __future__ import annotations

import time
from typing import ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ConnectionStats:
    """What happened to the server's connections (``api/server.py`` counts them on the event loop), for
    the drops no request metric can see: a connection closed or reset between requests never reaches
    the app. Process-wide: one ``sparsa serve`` runs one server."""

    EVENTS: ClassVar[dict[str, str]] = {
        "opened": "connections accepted",
        "closed_idle": "idle keep-alive connections the server closed (timeout_keep_alive)",
        "idle_close_spared": "keep-alive time-outs that found a request already waiting and kept the "
                             "connection (the close would have reset it: the client's ReadError)",
        "request_after_idle_close": "requests that arrived on a connection just closed as idle (sent "
                                    "before the client saw the close: it gets no answer and must retry)",
        "reset": "connections lost with an error (reset by the peer)",
        "client_left_mid_request": "connections the client closed before its response was complete",
        "refused_busy": "requests refused with 503 past the connection limit (max_connections)",
        "bad_http": "requests that were not valid HTTP (400; headers over 16 KiB included)",
    }

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.EVENTS, 0)
        self.open = 0

    def add(self, event: str) -> None:
        self.counts[event] += 1  # only the event loop's thread counts


CONNECTIONS = ConnectionStats()


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("sparsa_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("sparsa_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.searches = Histogram("sparsa_search_seconds", "search latency by retriever", ["retriever"],
                                  buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.ready = Gauge("sparsa_ready", "1 when every configured index and model is loaded",
                           registry=self.registry)
        self.documents = Gauge("sparsa_index_documents", "documents in each served index", ["retriever"],
                               registry=self.registry)
        self.pending = Gauge("sparsa_gate_pending", "requests running or waiting per endpoint class",
                             ["gate"], registry=self.registry)
        self.rejected = Gauge("sparsa_gate_rejected", "requests refused at admission (503) since start",
                              ["gate"], registry=self.registry)
        self.connection_events = Gauge("sparsa_connection_events", "connection events since start, by "
                                       "event (ConnectionStats.EVENTS)", ["event"], registry=self.registry)
        self.connections_open = Gauge("sparsa_connections_open", "open HTTP connections",
                                      registry=self.registry)

    def observe(self, route: str, method: str, status: int, started: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)

    def render(self, state, gates=None) -> bytes:
        self.ready.set(1 if state.ready else 0)
        for name, served in list(state.indexes.items()):
            self.documents.labels(name).set(served.manifest.get("num_documents") or 0)
        for gate in gates.all() if gates is not None else ():
            self.pending.labels(gate.name).set(gate.pending)
            self.rejected.labels(gate.name).set(gate.rejected)
        for event, count in CONNECTIONS.counts.items():
            self.connection_events.labels(event).set(count)
        self.connections_open.set(CONNECTIONS.open)
        return generate_latest(self.registry)
