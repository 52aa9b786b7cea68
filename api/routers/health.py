"""``GET /health`` (ready only when every configured index and model is loaded) and ``GET /metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from sparsa.api.deps import Metrics, State
from sparsa.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health, "description": "not ready"}})
def health(state: State):
    body = Health(**state.health())
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (text format)")
def metrics(state: State, metrics: Metrics) -> Response:
    return Response(metrics.render(state), media_type=CONTENT_TYPE_LATEST)
