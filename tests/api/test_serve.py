"""``sparsa serve`` as a user runs it: a real process on loopback, example calls, clean stop on SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.api.test_web import _free_port

pytestmark = [pytest.mark.java, pytest.mark.slow]


def test_serve_prints_examples_answers_and_stops(index_root, shared_data, tmp_path):
    import httpx

    port = _free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "sparsa", "serve", "--bm25", str(index_root / "bm25"), "--splade",
               str(index_root / "splade"), "--dataset", str(shared_data / "cranfield"), "--qa-model", "none",
               "--port", str(port), "--api-key", "k"]
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
        assert f"serving on http://localhost:{port}" in printed and f"curl -s http://localhost:{port}/search" in printed
        hits = httpx.post(base + "/search", json={"query": "boundary layer", "retriever": "hybrid", "k": 3}).json()
        assert len(hits["hits"]) == 3
        assert httpx.get(base + "/indexes", headers={"X-API-Key": "k"}).status_code == 200
        assert httpx.post(base + "/qa", json={"question": "why?"}).status_code == 503  # started with --qa-model none
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(30) == 0
