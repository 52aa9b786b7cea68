"""The operator's service limits (``sparsa serve`` flags -> ``ServiceLimits``, issue 26): validated before
anything loads, and enforced per request (k, rerank depth and candidates: 400; generated tokens: the QA
reader's cap)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from sparsa.errors import ConfigError

pytestmark = [pytest.mark.java, pytest.mark.slow]


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-k", "5000"], "service limits above the API's own: max_k=5000 (the API allows 1000)"),
    (["--qa-queue", "-1", "--search-workers", "0"],
     "service limits must be >= 1 (queues >= 0): search_workers=0, qa_queue=-1"),
    (["--keep-alive", "0"], "service time limits (body timeout, keep-alive, key window) must be > 0"),
])
def test_serve_refuses_bad_limits_before_loading(flags, message, tmp_path):
    done = subprocess.run([sys.executable, "-m", "sparsa", "serve", *flags], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "SPARSA_HOME": str(tmp_path)}, check=False)
    assert done.returncode == 2 and message in done.stdout + done.stderr, (done.stdout, done.stderr)


def test_serve_help_lists_the_limits():
    done = subprocess.run([sys.executable, "-m", "sparsa", "serve", "--help"], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, "COLUMNS": "200"})
    for flag in ("--search-workers", "--search-queue", "--rerank-workers", "--rerank-queue", "--qa-workers",
                 "--qa-queue", "--max-k", "--max-rerank-depth", "--max-new-tokens", "--body-timeout",
                 "--keep-alive", "--max-connections", "--build-threads", "--timeout"):
        assert flag in done.stdout, flag


def test_limits_validate_in_python_too():
    from sparsa.api.settings import ServiceLimits

    with pytest.raises(ConfigError, match="max_rerank_depth=101"):
        ServiceLimits(max_rerank_depth=101)
    assert ServiceLimits().keep_alive_s > 5  # outlasts httpx's 5 s idle expiry (api/server.py)
    with pytest.raises(ConfigError, match="build_threads=0"):
        ServiceLimits(build_threads=0)
    assert 1 <= ServiceLimits().build_threads <= max(1, os.cpu_count() // 2)  # the rest keep serving


def test_per_request_work_past_the_limits_is_refused(loaded_state):
    from fastapi.testclient import TestClient

    from sparsa.api import create_app

    limits = dataclasses.replace(loaded_state.config.limits, max_k=20, max_rerank_depth=5)
    config = dataclasses.replace(loaded_state.config, limits=limits)
    with TestClient(create_app(config, loaded_state)) as client:
        assert client.post("/search", json={"query": "boundary layer", "k": 20}).status_code == 200
        wide = client.post("/search", json={"query": "boundary layer", "k": 21})
        assert wide.status_code == 400
        assert wide.json() == {"detail": "k=21 is over this server's limit of 20 hits"}
        deep = client.post("/search", json={"query": "boundary layer", "rerank": True, "rerank_depth": 6})
        assert deep.status_code == 400 and "reranking 6 passages is over this server's limit of 5" in \
            deep.json()["detail"]
        many = client.post("/rerank", json={"query": "q", "passages": [{"text": f"p{i}"} for i in range(6)]})
        assert many.status_code == 400 and "limit of 5" in many.json()["detail"]


def test_the_qa_reader_generates_at_most_max_new_tokens(index_root, shared_data):
    from sparsa.api import ServiceState
    from tests.api.conftest import service_config

    config = service_config(index_root, shared_data, indexes={"bm25": index_root / "bm25"},
                            qa_model="smollm2-135m-instruct")
    assert ServiceState(config).qa_chain().reader.max_new_tokens == 24  # the reader's own default, under 256
    capped = dataclasses.replace(config, limits=dataclasses.replace(config.limits, max_new_tokens=4))
    assert ServiceState(capped).qa_chain().reader.max_new_tokens == 4
