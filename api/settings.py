"""What a running service serves and how it guards itself: ``ServiceConfig``.

Built by ``sparsa serve`` from its flags, or from ``SPARSA_API_*`` variables (``config_from_env``).
Per-request limits that clients must know (k, text lengths) are part of the contract and live in
``api/schemas.py``; the limits here are the operator's (body size, time-out, keys).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsa.config import load_settings
from sparsa.errors import ConfigError

RETRIEVERS = ("bm25", "splade", "dense", "hybrid")
BASE_RETRIEVERS = ("bm25", "splade", "dense")  # each served from one index; hybrid fuses them


@dataclass(frozen=True)
class ServiceConfig:
    """``indexes`` maps a retriever (bm25, splade, dense) to an index folder; ``dataset`` gives passage
    texts."""

    indexes: dict[str, Path] = field(default_factory=dict)
    dataset: Path | None = None
    reranker: str | None = None  # a RERANKERS name, e.g. "query-likelihood"
    reranker_model: str | None = None  # tildev2: the passage store; query-likelihood: an LM (None: default)
    qa_model: str | None = None  # reader LM for /qa (None: QA off)
    qa_k: int = 5
    qa_router: Path | None = None  # a router file (sparsa.rag.routing); without it "auto" always retrieves
    # A sparsa.rag.config.PipelineConfig: /qa runs exactly this chain (its indexes must be served). Without
    # it, /qa runs qa_model over the served BM25 index (else the first served), with the server's reranker.
    qa_pipeline: Any = None
    # A sparsa train event head: /search on the dense index with as_of encodes the query as of that day.
    event_encoder: Path | None = None
    api_key: str | None = None  # management endpoints need it; without it they are off
    open_search: bool = True  # False: /search, /rerank and /qa need the key too
    max_body_bytes: int = 64 * 1024
    timeout_s: float = 30.0
    index_root: Path = field(default_factory=lambda: load_settings().index_dir)
    data_dir: Path = field(default_factory=lambda: load_settings().data_dir)
    verify: str = "sha256"  # how indexes are checked when loaded: "size" or "sha256" (full)
    # Where the splade index is searched (exact backend) and its queries encoded; a list (cuda:0,cuda:1)
    # or cuda:all shards it over GPUs. None: SPARSA_DEVICE for the engine, the manifest's for the encoder.
    splade_device: str | None = None
    limits: ServiceLimits = field(default_factory=lambda: ServiceLimits())  # queues, connections, jobs, keys

    def __post_init__(self) -> None:
        unknown = set(self.indexes) - set(BASE_RETRIEVERS)
        if unknown:
            raise ConfigError(f"unknown retriever(s) {sorted(unknown)}; an index serves one of "
                              f"{', '.join(BASE_RETRIEVERS)}")
        if not self.open_search and not self.api_key:
            raise ConfigError("keyed search needs an API key (SPARSA_API_KEY or --api-key)")
        if self.max_body_bytes < 1024 or self.timeout_s <= 0:
            raise ConfigError("max_body_bytes must be >= 1024 and timeout_s > 0")
        if self.verify not in ("size", "sha256"):
            raise ConfigError(f"verify must be 'size' or 'sha256', got {self.verify!r}")


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r}: expected true or false")


def config_from_env(env: dict[str, str] | None = None) -> ServiceConfig:
    """``SPARSA_API_INDEX_BM25`` / ``_SPLADE`` / ``_DENSE`` (folders), ``SPARSA_API_DATASET``,
    ``SPARSA_API_RERANKER``, ``SPARSA_API_QA_MODEL``, ``SPARSA_API_KEY``, ``SPARSA_API_OPEN_SEARCH``,
    ``SPARSA_API_TIMEOUT_S``."""
    env = os.environ if env is None else env
    indexes = {name: Path(env[f"SPARSA_API_INDEX_{name.upper()}"]) for name in BASE_RETRIEVERS
               if env.get(f"SPARSA_API_INDEX_{name.upper()}")}
    try:
        timeout = float(env.get("SPARSA_API_TIMEOUT_S", "30"))
    except ValueError:
        raise ConfigError(f"SPARSA_API_TIMEOUT_S={env['SPARSA_API_TIMEOUT_S']!r} is not a number") from None
    return ServiceConfig(
        indexes=indexes,
        dataset=Path(env["SPARSA_API_DATASET"]) if env.get("SPARSA_API_DATASET") else None,
        reranker=env.get("SPARSA_API_RERANKER") or None,
        qa_model=env.get("SPARSA_API_QA_MODEL") or None,
        api_key=env.get("SPARSA_API_KEY") or None,
        open_search=_flag(env, "SPARSA_API_OPEN_SEARCH", True),
        timeout_s=timeout,
    )


@dataclass(frozen=True)
class ServiceLimits:
    """How much the service takes on at once (the operator's limits; ``api/admission.py``, ``api/jobs.py``).

    Each endpoint class runs on ``*_workers`` threads with ``*_queue`` more requests waiting; past that,
    or when the waiting work would end after a request's deadline, requests get 503 + Retry-After.
    """

    search_workers: int = 4
    search_queue: int = 256
    rerank_workers: int = 1
    rerank_queue: int = 4
    qa_workers: int = 1
    qa_queue: int = 3
    body_timeout_s: float = 10.0  # a request body not fully received by then: 408 and the connection closes
    max_connections: int = 512  # uvicorn limit_concurrency: connections + tasks beyond it get 503
    # Idle keep-alive connections close after this. Longer than common clients' own idle expiry (httpx:
    # 5 s), so the client closes an idle connection first: a server close can meet a request the client
    # is sending on it, which then fails with a reset (bench_service.py's SPLADE run; api/server.py).
    keep_alive_s: float = 20.0
    backlog: int = 2048  # connections the kernel queues before the server accepts them (uvicorn's default)
    # Per-request work (a request past them: 400 naming the limit). The API's own maxima (api/schemas.py:
    # k 1,000, rerank depth and candidates 100) are the defaults; an operator may only lower them.
    max_k: int = 1000
    max_rerank_depth: int = 100  # /search rerank_depth and /rerank candidates
    max_new_tokens: int = 256  # the QA reader generates at most this many tokens (its config's, if fewer)
    max_builds: int = 1  # index builds running at once (more: 429)
    # CPU threads of one index build (SPLADE encoding, Lucene); the rest of the cores keep serving.
    build_threads: int = max(1, (os.cpu_count() or 2) // 2)
    keep_job_logs: int = 20  # build logs kept (oldest deleted); the job table keeps 10x as many jobs
    job_log_bytes: int = 1 << 20  # a build log rotates to <log>.1 past this size
    key_failures: int = 10  # wrong API keys from one client within key_window_s before it gets 429
    key_window_s: float = 60.0

    def __post_init__(self) -> None:
        from sparsa.api.schemas import MAX_CANDIDATES, MAX_K, MAX_RERANK_DEPTH

        counts = ("search_workers", "rerank_workers", "qa_workers", "max_connections", "backlog",
                  "max_k", "max_rerank_depth", "max_new_tokens", "max_builds", "build_threads",
                  "key_failures")
        low = [f"{name}={getattr(self, name)}" for name in counts if getattr(self, name) < 1]
        low += [f"{name}={getattr(self, name)}" for name in ("search_queue", "rerank_queue", "qa_queue")
                if getattr(self, name) < 0]
        if low:
            raise ConfigError(f"service limits must be >= 1 (queues >= 0): {', '.join(low)}")
        times = ("body_timeout_s", "keep_alive_s", "key_window_s")
        if min(getattr(self, name) for name in times) <= 0 or self.job_log_bytes < 1024:
            raise ConfigError("service time limits (body timeout, keep-alive, key window) must be > 0 "
                              "and job_log_bytes >= 1024")
        api_max = {"max_k": MAX_K, "max_rerank_depth": min(MAX_RERANK_DEPTH, MAX_CANDIDATES)}
        over = [f"{name}={getattr(self, name)} (the API allows {most})" for name, most in api_max.items()
                if getattr(self, name) > most]
        if over:
            raise ConfigError(f"service limits above the API's own: {', '.join(over)}")
