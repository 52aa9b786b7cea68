"""``sparsa serve`` as a user runs it: a real process on loopback, example calls, clean stop on SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.api.live_server import free_port as _free_port

pytestmark = [pytest.mark.java, pytest.mark.slow]


def test_serve_prints_examples_answers_and_stops(index_root, shared_data, tmp_path):
    import httpx

    port = _free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "sparsa", "serve", "--bm25", str(index_root / "bm25"), "--splade",
               str(index_root / "splade"), "--dataset", str(shared_data / "cranfield"), "--qa-model", "none",
               "--port", str(port), "--api-key", "k", "--keep-alive", "3"]
    with log.open("wb") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        printed = log.read_text()
        assert (f"serving on http://localhost:{port}" in printed
                and f"curl -s http://localhost:{port}/search" in printed)
        hits = httpx.post(base + "/search", json={"query": "boundary layer", "retriever": "hybrid",
                                                  "k": 3}).json()
        assert len(hits["hits"]) == 3
        assert httpx.get(base + "/indexes", headers={"X-API-Key": "k"}).status_code == 200
        # started with --qa-model none
        assert httpx.post(base + "/qa", json={"question": "why?"}).status_code == 503
        assert_connection_limits(port)
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(30) == 0


def _read_all(sock: socket.socket) -> tuple[bytes, float]:
    started, data = time.monotonic(), b""
    while chunk := sock.recv(4096):
        data += chunk
    return data, time.monotonic() - started


def assert_connection_limits(port: int) -> None:
    """uvicorn as ``sparsa serve`` runs it: idle keep-alive connections close after ``--keep-alive 3``
    seconds, and a body that stops arriving gets 408 after 10 s (issue 26, item 7: half-sent bodies were
    held for 90 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        reply, idle = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 200") and 2 <= idle < 6, (reply[:40], idle)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"query\": ")
        reply, waited = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408") and 9 <= waited < 14, (reply[:40], waited)
