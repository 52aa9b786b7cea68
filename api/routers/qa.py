"""``POST /qa``: answer a question through the RAG pipeline (``sparsa.rag.pipeline``)."""

from __future__ import annotations

from fastapi import APIRouter

from sparsa.api.deps import SearchKey, State, run_blocking
from sparsa.api.schemas import ErrorBody, QARequest, QAResponse, to_hits

router = APIRouter(tags=["qa"], dependencies=[SearchKey],
                   responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 403: {"model": ErrorBody},
                              503: {"model": ErrorBody}, 504: {"model": ErrorBody}})


@router.post("/qa", response_model=QAResponse, summary="Answer a question (retrieve, recall, or let the router choose)")
async def qa(body: QARequest, state: State) -> QAResponse:
    answer = await run_blocking(state, state.answer, body.question, body.mode)
    return QAResponse(question=answer.question, answer=answer.text, citations=list(answer.citations),
                      route=str(answer.route), passages=to_hits(answer.passages, state.corpus),
                      timings={k: float(v) for k, v in answer.timings.items()})
