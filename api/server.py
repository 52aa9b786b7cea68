"""The HTTP connection layer of ``sparsa serve``: uvicorn's h11 protocol, with three changes.

- **Every error is JSON.** uvicorn answers two errors itself, in plain text: 400 "Invalid HTTP request
  received." (a request it cannot parse, headers over the 16 KiB limit included) and 503 "Service
  Unavailable" past ``limit_concurrency``. Here both are ``{"detail": ...}`` like every other error
  (the 503 with ``Retry-After``); the connection limit is applied by this protocol, not uvicorn's.
- **Idle closes drop no request unseen.** uvicorn closes a keep-alive connection ``timeout_keep_alive``
  seconds after its last response. A client that sends its next request on that connection just then
  (its pool still counted it as alive) sees the close as a reset, and gets no answer (httpx:
  ``ReadError``); the server never saw a request, so no request metric counts it. Before closing, this
  protocol looks whether request bytes are already waiting in the socket; if so the connection stays and
  the request is served. A request still on the wire when the close happens cannot be answered (the
  FIN is out), but the close is a half-close, so the request is read and counted instead of meeting a
  closed socket, which the kernel answers with a reset that no server metric sees. The default
  keep-alive outlasts common clients' idle expiry (5 s in httpx), so well-behaved pools close first.
- **Connections are counted** (``api.metrics.CONNECTIONS``, in ``/metrics`` as
  ``sparsa_connection_events{event}``): idle closes, spared closes, resets, clients that left mid-request,
  refusals, bad requests.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from sparsa.api.metrics import CONNECTIONS

IDLE_LINGER_S = 2.0  # how long a half-closed idle connection waits for the client to close its side
BAD_HTTP = ("invalid HTTP request: the request line or headers could not be parsed (headers are limited "
            "to 16 KiB)")


def _json(detail: str) -> bytes:
    return json.dumps({"detail": detail}).encode()


def _bytes_waiting(transport: Any) -> int:
    """Bytes received on the connection's socket and not read yet (0 when it cannot tell)."""
    sock = transport.get_extra_info("socket")
    try:
        import fcntl  # POSIX only: elsewhere the close is never spared
        import termios

        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (ImportError, OSError, AttributeError, ValueError):
        return 0


class ServiceProtocol(H11Protocol):
    """``uvicorn.run(..., http=ServiceProtocol)``: JSON errors, race-free idle closes, counted connections.
    ``limit_concurrency`` is read from uvicorn's config (the service's ``max_connections``)."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None):
        super().__init__(config, server_state, app_state, _loop)
        self.idle_closed = False  # half-closed after the keep-alive time-out
        self.max_connections = self.limit_concurrency
        self.limit_concurrency = None  # uvicorn's own check answers in plain text; ours (below) in JSON
        if self.max_connections is not None:
            self.app = self._limited(self.app)

    def _limited(self, app: Any) -> Any:
        async def limited(scope: Any, receive: Any, send: Any) -> None:
            # uvicorn's rule: refuse when the open connections, or the running requests before this one,
            # reach the limit (this request's own task is already counted here)
            if len(self.connections) >= self.max_connections or len(self.tasks) > self.max_connections:
                CONNECTIONS.add("refused_busy")
                body = _json(f"the server is busy: {self.max_connections} connections or requests at once "
                             "is its limit; retry later")
                await send({"type": "http.response.start", "status": 503, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"1"), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
            await app(scope, receive, send)

        return limited

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        CONNECTIONS.add("opened")
        CONNECTIONS.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        CONNECTIONS.open -= 1
        if exc is not None:
            CONNECTIONS.add("reset")
        elif self.cycle is not None and not self.cycle.response_complete:
            CONNECTIONS.add("client_left_mid_request")
        super().connection_lost(exc)

    def timeout_keep_alive_handler(self) -> None:
        if self.transport.is_closing() or self.idle_closed:
            return
        if _bytes_waiting(self.transport):  # a request arrived after this loop turn polled the socket
            CONNECTIONS.add("idle_close_spared")
            return  # its data_received comes next turn (and would have cancelled this timer)
        CONNECTIONS.add("closed_idle")
        if not self.transport.can_write_eof():
            return super().timeout_keep_alive_handler()
        # Half-close: the FIN goes out, and a request already on its way is read and counted here. A full
        # close would let the kernel answer it with a reset, which no metric of this server sees.
        self.idle_closed = True
        self.conn.send(h11.ConnectionClosed())
        self.transport.write_eof()
        self.loop.call_later(IDLE_LINGER_S, self.transport.close)  # a client that never closes its side

    def data_received(self, data: bytes) -> None:
        if self.idle_closed:  # sent before the client saw our FIN: no answer (httpx: RemoteProtocolError)
            CONNECTIONS.add("request_after_idle_close")
            self.transport.close()
            return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        CONNECTIONS.add("bad_http")
        body = _json(BAD_HTTP)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def uvicorn_config(app: Any, host: str, port: int, limits: Any, log_level: str = "warning") -> Any:
    """The uvicorn config of ``sparsa serve`` (and of the tests' real servers) for ``limits``
    (``ServiceLimits``)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=ServiceProtocol,
                          timeout_graceful_shutdown=5, limit_concurrency=limits.max_connections,
                          timeout_keep_alive=limits.keep_alive_s, h11_max_incomplete_event_size=16 * 1024,
                          backlog=limits.backlog)
