"""``GET /health`` (ready only when every configured index and model is loaded) and ``GET /metrics``.

Both are ``async`` and touch no gate or worker thread, so they answer at once however busy the
endpoints are. ``/health`` names host paths only to a caller with the API key.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from sparsa.api.deps import HasKey, Metrics, State
from sparsa.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "not ready"}},
            description="Readiness. Index paths on the server are shown only with the API key "
                        "(optional here).")
async def health(state: State, has_key: HasKey):
    body = Health(**state.health(paths=has_key))
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text format)",
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format"}})
async def metrics(request: Request, state: State, metrics: Metrics) -> Response:
    return Response(metrics.render(state, request.app.state.gates), media_type=CONTENT_TYPE_LATEST)
