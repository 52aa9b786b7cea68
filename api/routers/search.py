"""``POST /search`` and ``POST /rerank``."""

from __future__ import annotations

import time

from fastapi import APIRouter

from sparsa.api.deps import Metrics, SearchKey, State, run_blocking
from sparsa.api.schemas import (
    ErrorBody,
    RerankRequest,
    RerankResponse,
    SearchRequest,
    SearchResponse,
    to_hits,
)
from sparsa.types import Document

router = APIRouter(tags=["search"], dependencies=[SearchKey],
                   responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 403: {"model": ErrorBody},
                              413: {"model": ErrorBody}, 503: {"model": ErrorBody}, 504: {"model": ErrorBody}})


@router.post("/search", response_model=SearchResponse, summary="Search a served index")
async def search(body: SearchRequest, state: State, metrics: Metrics) -> SearchResponse:
    started = time.perf_counter()

    def work():
        depth = max(body.k, body.rerank_depth) if body.rerank else body.k
        hits = state.search(body.query, body.retriever, depth)
        if body.rerank:
            hits = state.rerank_hits(body.query, hits, body.rerank_depth)
        return hits[: body.k]

    hits = await run_blocking(state, work)
    metrics.searches.labels(body.retriever).observe(time.perf_counter() - started)
    return SearchResponse(query=body.query, retriever=body.retriever, reranked=body.rerank,
                          hits=to_hits(hits, state.corpus, body.include_text),
                          took_ms=round(1000 * (time.perf_counter() - started), 2))


@router.post("/rerank", response_model=RerankResponse, summary="Rerank candidate passages or document ids")
async def rerank(body: RerankRequest, state: State) -> RerankResponse:
    started = time.perf_counter()

    def work():
        if body.passages is not None:
            docs = [Document(p.id or str(i), p.text, p.title) for i, p in enumerate(body.passages)]
            lookup = {d.id: d for d in docs}
        else:
            docs = state.documents(body.doc_ids)
            lookup = None
        return state.rerank(body.query, docs), lookup

    hits, lookup = await run_blocking(state, work)
    return RerankResponse(query=body.query, reranker=state.config.reranker or "", hits=to_hits(
        hits, lookup if lookup is not None else state.corpus), took_ms=round(1000 * (time.perf_counter() - started), 2))
