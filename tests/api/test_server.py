"""The connection layer of ``sparsa serve`` (``api/server.py``, issue 26): what uvicorn would answer in
plain text is JSON, the connection limit answers 503 with Retry-After, connections are counted in
/metrics, and an idle close that meets a waiting request serves it instead of resetting it (the SPLADE
load run's ReadErrors). Real uvicorn servers on loopback, raw sockets where the test needs the bytes."""

from __future__ import annotations

import dataclasses
import json
import socket
import time

import pytest

from tests.api.live_server import start_server

pytestmark = [pytest.mark.java, pytest.mark.slow]
HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def serve(app, limits):
    """``app`` under uvicorn as ``sparsa serve`` configures it; returns (port, uvicorn server, stop)."""
    return start_server(app, limits)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: (status, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data[:200]!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def events(port: int) -> dict[str, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        _, _, body = read_response(sock)
    found = {}
    for line in body.decode().splitlines():
        if line.startswith("sparsa_connection_events{"):
            found[line.split('event="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return found


@pytest.fixture(scope="module")
def app(loaded_state):
    from sparsa.api import create_app

    return create_app(loaded_state.config, loaded_state)


def test_errors_uvicorn_answers_itself_are_json(app, loaded_state):
    limits = dataclasses.replace(loaded_state.config.limits, max_connections=2)
    port, _, stop = serve(app, limits)
    try:
        for bad in (b"NOT HTTP AT ALL\r\n\r\n",
                    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000):  # headers not ended
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(bad)
                status, headers, body = read_response(sock)
            assert status == 400 and headers["content-type"] == "application/json", (status, headers)
            assert json.loads(body) == {"detail": "invalid HTTP request: the request line or headers could "
                                                  "not be parsed (headers are limited to 16 KiB)"}
        # at max_connections (2: an idle keep-alive connection and this one), 503 as JSON with Retry-After,
        # not uvicorn's text/plain "Service Unavailable"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
            idle.sendall(HEALTH)
            assert read_response(idle)[0] == 200
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(HEALTH)
                status, headers, body = read_response(sock)
        assert status == 503 and headers["content-type"] == "application/json", (status, headers, body)
        assert headers["retry-after"] == "1" and "the server is busy" in json.loads(body)["detail"]
        counted = events(port)
        assert counted["bad_http"] >= 2 and counted["refused_busy"] >= 1, counted
        # the app's own errors too: unknown path, wrong method, unknown static file
        app_errors = ((b"GET /nowhere", 404), (b"DELETE /health", 405), (b"GET /static/none.js", 404))
        for request, code in app_errors:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(request + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                status, headers, body = read_response(sock)
            assert status == code and headers["content-type"] == "application/json", (request, status)
            assert set(json.loads(body)) == {"detail"}
    finally:
        stop()


def _served_after_race(app, limits, handler) -> tuple[bytes | None, dict[str, float]]:
    """A keep-alive connection whose idle timer fires while its next request already waits unread (the
    event loop was busy when the request arrived): ``handler(protocol)`` is the timer's callback. Returns
    the client's reply to that request (None: the connection was reset) and the connection events."""
    port, server, stop = serve(app, limits)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(HEALTH)
            assert read_response(sock)[0] == 200
            (protocol,) = server.server_state.connections

            def busy_loop_then_timer():  # runs on the server's event loop, blocking it meanwhile
                sock.sendall(HEALTH)
                time.sleep(0.3)  # the request sits in the server's socket buffer, unread
                handler(protocol)

            protocol.loop.call_soon_threadsafe(busy_loop_then_timer)
            try:
                reply = read_response(sock)[2]
            except (ConnectionResetError, AssertionError):
                reply = None
        return reply, events(port)
    finally:
        stop()


def test_an_idle_close_that_meets_a_waiting_request_serves_it(app, loaded_state):
    from uvicorn.protocols.http.h11_impl import H11Protocol

    limits = dataclasses.replace(loaded_state.config.limits, keep_alive_s=60)
    # uvicorn's own handler closes the connection with the request unread: the kernel resets it and the
    # client gets no answer (httpx: ReadError), and no request metric counts it
    reply, before = _served_after_race(app, limits, H11Protocol.timeout_keep_alive_handler)
    assert reply is None
    reply, counted = _served_after_race(app, limits, lambda protocol: protocol.timeout_keep_alive_handler())
    assert reply is not None and json.loads(reply)["ready"] is True
    # (the counts are the process's: servers before this one may have counted too)
    assert counted["idle_close_spared"] == before.get("idle_close_spared", 0) + 1, (before, counted)


def test_idle_connections_close_after_the_keep_alive_and_are_counted(app, loaded_state):
    limits = dataclasses.replace(loaded_state.config.limits, keep_alive_s=0.5)
    port, _, stop = serve(app, limits)
    try:
        before = events(port)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(HEALTH)
            assert read_response(sock)[0] == 200
            started = time.monotonic()
            assert sock.recv(1) == b""  # the server closed it
            idle = time.monotonic() - started
            # a request sent before the client noticed the close: the server reads it and counts it (a full
            # close would have let the kernel reset it, unseen by the server)
            sock.sendall(HEALTH)
            counted = {}
            for _ in range(50):
                counted = events(port)
                if counted["request_after_idle_close"] > before.get("request_after_idle_close", 0):
                    break
                time.sleep(0.05)
        assert 0.3 < idle < 3, idle
        assert counted["closed_idle"] >= before.get("closed_idle", 0) + 1, (before, counted)
        assert counted["request_after_idle_close"] == before.get("request_after_idle_close", 0) + 1
    finally:
        stop()
