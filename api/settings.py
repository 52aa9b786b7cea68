"""What a running service serves and how it guards itself: ``ServiceConfig``.

Built by ``sparsa serve`` from its flags, or from ``SPARSA_API_*`` variables (``config_from_env``).
Per-request limits that clients must know (k, text lengths) are part of the contract and live in
``api/schemas.py``; the limits here are the operator's (body size, time-out, keys).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sparsa.config import load_settings
from sparsa.errors import ConfigError

RETRIEVERS = ("bm25", "splade", "dense", "hybrid")
BASE_RETRIEVERS = ("bm25", "splade", "dense")  # each served from one index; hybrid fuses them


@dataclass(frozen=True)
class ServiceConfig:
    """``indexes`` maps a retriever (bm25, splade, dense) to an index folder; ``dataset`` gives passage texts."""

    indexes: dict[str, Path] = field(default_factory=dict)
    dataset: Path | None = None
    reranker: str | None = None  # a RERANKERS name, e.g. "query-likelihood"
    reranker_model: str | None = None  # tildev2: the passage store; query-likelihood: an LM (None: default)
    qa_model: str | None = None  # reader LM for /qa (None: QA off)
    qa_k: int = 5
    qa_router: Path | None = None  # a router file (sparsa.rag.routing); without it "auto" always retrieves
    api_key: str | None = None  # management endpoints need it; without it they are off
    open_search: bool = True  # False: /search, /rerank and /qa need the key too
    max_body_bytes: int = 64 * 1024
    timeout_s: float = 30.0
    index_root: Path = field(default_factory=lambda: load_settings().index_dir)
    data_dir: Path = field(default_factory=lambda: load_settings().data_dir)
    verify: str = "sha256"  # how indexes are checked when loaded: "size" or "sha256" (full)

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
