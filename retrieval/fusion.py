"""Hybrid retrieval: fuse ranked lists from any retrievers (BM25, learned sparse, dense...).

- Reciprocal-rank fusion (Cormack et al. 2009): ``score(d) = sum_i w_i / (rrf_k + rank_i(d))``,
  ranks from 1; a document missing from a run adds nothing. Needs no score calibration.
- Score interpolation: each run's scores are normalised per query (``minmax`` to [0, 1], or
  ``zscore``: mean 0, standard deviation 1), then ``score(d) = sum_i w_i * norm_i(d)``. A document
  missing from run i gets that run's lowest normalised score for the query (0 under min-max), i.e.
  it is treated as ranked just below the run's depth.

Only the top ``depth`` hits of each run take part (None: all). ``k`` is the number of fused hits
kept per query, as in every ``search(queries, k)``. This module imports no index: retrievers
arrive as ``sparsa.search.Retriever`` s (``search(queries, k) -> Run``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from sparsa.errors import ConfigError
from sparsa.search import Retriever
from sparsa.types import Hit, Query, Run

Normalisation = Literal["minmax", "zscore"]
METHODS = ("rrf", "interp")


def _weights(runs: Sequence[Run], weights: Sequence[float] | None) -> list[float]:
    if not runs:
        raise ConfigError("nothing to fuse: no runs")
    if weights is None:
        return [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ConfigError(f"{len(weights)} weights for {len(runs)} runs")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ConfigError(f"weights must be finite and >= 0, got {list(weights)}")
    return [float(w) for w in weights]


def _query_ids(runs: Sequence[Run]) -> list[str]:
    seen: dict[str, None] = {}
    for run in runs:
        seen.update(dict.fromkeys(run))
    return list(seen)


def _top(hits: list[Hit], k: int) -> list[Hit]:
    return sorted(hits, key=lambda h: (-h.score, h.doc_id))[:k]


def reciprocal_rank_fusion(runs: Sequence[Run], weights: Sequence[float] | None = None, k: int = 1000,
                           rrf_k: float = 60.0, depth: int | None = None, name: str = "rrf") -> Run:
    """Weighted RRF of ``runs``; keeps the best ``k`` fused hits per query."""
    ws = _weights(runs, weights)
    if rrf_k < 0:
        raise ConfigError(f"rrf_k must be >= 0, got {rrf_k}")
    fused: dict[str, list[Hit]] = {}
    for qid in _query_ids(runs):
        scores: dict[str, float] = {}
        for run, w in zip(runs, ws, strict=True):
            for rank, hit in enumerate(run.get(qid, [])[:depth], start=1):
                scores[hit.doc_id] = scores.get(hit.doc_id, 0.0) + w / (rrf_k + rank)
        fused[qid] = _top([Hit(d, s) for d, s in scores.items()], k)
    return Run(fused, name=name)


def normalise_scores(hits: Sequence[Hit], method: Normalisation = "minmax") -> dict[str, float]:
    """Doc id -> normalised score for one query's hits."""
    if not hits:
        return {}
    scores = [h.score for h in hits]
    if method == "minmax":
        low, high = min(scores), max(scores)
        span = high - low
        return {h.doc_id: (h.score - low) / span if span > 0 else 1.0 for h in hits}
    if method == "zscore":
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        return {h.doc_id: (h.score - mean) / std if std > 0 else 0.0 for h in hits}
    raise ConfigError(f"unknown normalisation {method!r}; known: minmax, zscore")


def interpolate(runs: Sequence[Run], weights: Sequence[float] | None = None, k: int = 1000,
                normalisation: Normalisation = "minmax", depth: int | None = None,
                name: str = "interp") -> Run:
    """Weighted sum of per-query normalised scores; keeps the best ``k`` fused hits per query."""
    ws = _weights(runs, weights)
    fused: dict[str, list[Hit]] = {}
    for qid in _query_ids(runs):
        normalised = [normalise_scores(run.get(qid, [])[:depth], normalisation) for run in runs]
        floors = [min(n.values()) if n else 0.0 for n in normalised]
        docs = {d for n in normalised for d in n}
        fused[qid] = _top(
            [Hit(d, sum(w * n.get(d, floor) for n, w, floor in zip(normalised, ws, floors, strict=True)))
             for d in docs], k)
    return Run(fused, name=name)


def fuse(runs: Sequence[Run], method: str = "rrf", weights: Sequence[float] | None = None, k: int = 1000,
         depth: int | None = None, normalisation: Normalisation = "minmax", rrf_k: float = 60.0) -> Run:
    """``rrf`` or ``interp`` (with ``normalisation``) over ``runs``."""
    if method == "rrf":
        return reciprocal_rank_fusion(runs, weights, k=k, rrf_k=rrf_k, depth=depth)
    if method == "interp":
        return interpolate(runs, weights, k=k, normalisation=normalisation, depth=depth,
                           name=f"interp-{normalisation}")
    raise ConfigError(f"unknown fusion method {method!r}; known: {', '.join(METHODS)}")


class HybridRetriever(Retriever):
    """Several retrievers behind one ``search(queries, k) -> Run``: each fetches ``depth``
    hits, then fusion."""

    def __init__(self, retrievers: Sequence[Retriever], method: str = "rrf",
                 weights: Sequence[float] | None = None,
                 depth: int = 1000, normalisation: Normalisation = "minmax", rrf_k: float = 60.0):
        if method not in METHODS:
            raise ConfigError(f"unknown fusion method {method!r}; known: {', '.join(METHODS)}")
        self.retrievers = list(retrievers)
        self.weights = _weights([Run()] * len(self.retrievers), weights)
        self.method, self.depth, self.normalisation, self.rrf_k = method, depth, normalisation, rrf_k
        self.name = (f"{method}(" + ",".join(getattr(r, "name", type(r).__name__) for r in self.retrievers)
                     + ")")

    def search(self, queries: Sequence[Query], k: int = 1000, show_progress: bool | None = None) -> Run:
        runs = [r.search(queries, k=max(k, self.depth), show_progress=show_progress) for r in self.retrievers]
        fused = fuse(runs, self.method, self.weights, k=k, depth=self.depth, normalisation=self.normalisation,
                     rrf_k=self.rrf_k)
        fused.name = self.name
        return fused
