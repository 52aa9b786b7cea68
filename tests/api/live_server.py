"""Real uvicorn servers on loopback for the service tests: a free port, and a server in a thread."""

from __future__ import annotations

import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(app, limits=None):
    """``app`` under uvicorn in a daemon thread: as ``sparsa serve`` configures it when ``limits`` (its
    ``ServiceLimits``) are given, else uvicorn's defaults. Returns (port, uvicorn server, stop)."""
    import uvicorn

    port = free_port()
    if limits is None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    else:
        from sparsa.api.server import uvicorn_config

        config = uvicorn_config(app, "127.0.0.1", port, limits)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"

    def stop():
        server.should_exit = True
        thread.join(10)

    return port, server, stop
