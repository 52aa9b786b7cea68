"""Dependencies shared by the routers: the loaded state, API-key checks, and blocking calls with a time-out."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from sparsa.api.jobs import BuildJobs
from sparsa.api.metrics import ServiceMetrics
from sparsa.api.settings import ServiceConfig
from sparsa.api.state import ServiceState

API_KEY_HEADER = "X-API-Key"
_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                           description="the server's API key (index management; search too when keyed)")


class RequestTimeout(Exception):
    def __init__(self, seconds: float):
        self.seconds = seconds


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_config(request: Request) -> ServiceConfig:
    return request.app.state.service.config


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_jobs(request: Request) -> BuildJobs:
    return request.app.state.jobs


def _check_key(config: ServiceConfig, given: str | None) -> None:
    if config.api_key is None:
        raise HTTPException(403, "index management is disabled on this server: it has no API key configured")
    if not given:
        raise HTTPException(401, f"missing API key: send it in the {API_KEY_HEADER} header",
                            headers={"WWW-Authenticate": "ApiKey"})
    if not secrets.compare_digest(given.encode(), config.api_key.encode()):
        raise HTTPException(403, "invalid API key")


def require_admin_key(request: Request, key: Annotated[str | None, Security(_key_header)] = None) -> None:
    _check_key(get_config(request), key)


def require_search_key(request: Request, key: Annotated[str | None, Security(_key_header)] = None) -> None:
    config = get_config(request)
    if not config.open_search:
        _check_key(config, key)


State = Annotated[ServiceState, Depends(get_state)]
Metrics = Annotated[ServiceMetrics, Depends(get_metrics)]
Jobs = Annotated[BuildJobs, Depends(get_jobs)]
SearchKey = Depends(require_search_key)
AdminKey = Depends(require_admin_key)


async def run_blocking(state: ServiceState, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a compute-bound library call in a worker thread, giving up after the configured time-out.

    The worker cannot be interrupted; on time-out the client gets 504 and the thread finishes alone.
    """
    try:
        with anyio.fail_after(state.config.timeout_s):
            return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
    except TimeoutError:
        raise RequestTimeout(state.config.timeout_s) from None
