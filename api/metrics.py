"""Prometheus metrics for one app (its own registry, so several apps in one process do not clash)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


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
        return generate_latest(self.registry)
