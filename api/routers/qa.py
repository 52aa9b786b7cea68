"""``POST /qa``: answer a question through the RAG pipeline (``sparsa.rag.pipeline``)."""

from __future__ import annotations

from fastapi import APIRouter

from sparsa.api.deps import GatesDep, SearchKey, State, run_gated
from sparsa.api.schemas import Knowledge, QARequest, QAResponse, error_responses, to_hits

router = APIRouter(tags=["qa"], dependencies=[SearchKey],
                   responses=error_responses(400, 401, 403, 408, 409, 413, 422, 429, 503, 504))


@router.post("/qa", response_model=QAResponse,
             summary="Answer a question (retrieve, recall, or let the router choose)")
async def qa(body: QARequest, state: State, gates: GatesDep) -> QAResponse:
    answer = await run_gated(gates.qa, state.answer, body.question, body.mode, body.as_of)
    return QAResponse(question=answer.question, answer=answer.text, citations=list(answer.citations),
                      route=str(answer.route), passages=to_hits(answer.passages, state.corpus),
                      timings={k: float(v) for k, v in answer.timings.items()},
                      knowledge=[Knowledge(**item) for item in answer.knowledge])
