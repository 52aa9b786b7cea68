"""``POST /search`` and ``POST /rerank``, each on its gate (``api/admission.py``)."""

from __future__ import annotations

import time

from fastapi import APIRouter

from sparsa.api.deps import GatesDep, Metrics, SearchKey, State, run_gated
from sparsa.api.schemas import (
    RerankRequest,
    RerankResponse,
    SearchRequest,
    SearchResponse,
    error_responses,
    passage_ids,
    to_hits,
)
from sparsa.errors import ConfigError
from sparsa.types import Corpus, Document

router = APIRouter(tags=["search"], dependencies=[SearchKey],
                   responses=error_responses(400, 401, 403, 408, 409, 413, 422, 429, 503, 504))


def check_work(gates, k: int | None = None, passages: int | None = None) -> None:
    """The operator's per-request limits (``sparsa serve --max-k / --max-rerank-depth``): 400 past them."""
    limits = gates.limits
    if k is not None and k > limits.max_k:
        raise ConfigError(f"k={k} is over this server's limit of {limits.max_k} hits")
    if passages is not None and passages > limits.max_rerank_depth:
        raise ConfigError(f"reranking {passages} passages is over this server's limit of "
                          f"{limits.max_rerank_depth} (rerank_depth, or fewer candidates)")


def rerank_cost(state, gates, passages: int) -> float | None:
    """Expected seconds to rerank ``passages``; refuses (400) work that cannot finish in the time limit."""
    per = state.rerank_cost.value
    if per is None or state.reranker is None:
        return None
    cost, limit = passages * per, gates.rerank.timeout_s
    if cost > limit:
        most = max(1, int(limit / per))
        raise ConfigError(f"reranking {passages} passages takes about {cost:.0f} s on this server, over its "
                          f"time limit of {limit:g} s; ask for at most {most} (rerank_depth, or fewer "
                          "candidates)")
    return cost


@router.post("/search", response_model=SearchResponse, summary="Search a served index")
async def search(body: SearchRequest, state: State, metrics: Metrics, gates: GatesDep) -> SearchResponse:
    started = time.perf_counter()
    check_work(gates, body.k, body.rerank_depth if body.rerank else None)

    def work():
        depth = max(body.k, body.rerank_depth) if body.rerank else body.k
        fusion = {"method": body.fusion, "weights": body.weights, "normalisation": body.normalisation,
                  "rrf_k": body.rrf_k}
        hits = state.search(body.query, body.retriever, depth, fusion, body.as_of)
        if body.rerank:
            hits = state.rerank_hits(body.query, hits, body.rerank_depth)
        return hits[: body.k]

    if body.rerank:
        hits = await run_gated(gates.rerank, work, cost=rerank_cost(state, gates, body.rerank_depth))
    else:
        hits = await run_gated(gates.search, work)
    metrics.searches.labels(body.retriever).observe(time.perf_counter() - started)
    return SearchResponse(query=body.query, retriever=body.retriever, reranked=body.rerank,
                          hits=to_hits(hits, state.corpus, body.include_text),
                          took_ms=round(1000 * (time.perf_counter() - started), 2))


@router.post("/rerank", response_model=RerankResponse, summary="Rerank candidate passages or document ids",
             description="Give exactly one of `passages` or `doc_ids`. Hits come back under the passage's id "
                         "(or `#<position>` for a passage without one).")
async def rerank(body: RerankRequest, state: State, gates: GatesDep) -> RerankResponse:
    started = time.perf_counter()

    def work():
        if body.passages is not None:  # reranked under their unique ids; texts looked up by the same ids
            docs = [Document(i, p.text, p.title) for i, p in zip(passage_ids(body.passages), body.passages,
                                                                    strict=True)]
        else:
            docs = state.documents(body.doc_ids)
        return state.rerank(body.query, docs), Corpus(docs)

    count = len(body.passages if body.passages is not None else body.doc_ids)
    check_work(gates, passages=count)
    hits, lookup = await run_gated(gates.rerank, work, cost=rerank_cost(state, gates, count))
    return RerankResponse(query=body.query, reranker=state.config.reranker or "", hits=to_hits(hits, lookup),
                          took_ms=round(1000 * (time.perf_counter() - started), 2))
