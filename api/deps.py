"""Dependencies shared by the routers: the loaded state, API-key checks (with a limit on wrong guesses)
and running library calls on an endpoint's gate (``api/admission.py``)."""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from sparsa.api.admission import Gate, Gates, RequestTimeout
from sparsa.api.jobs import BuildJobs
from sparsa.api.metrics import ServiceMetrics
from sparsa.api.settings import ServiceConfig
from sparsa.api.state import ServiceState

# Every dependency here is async: it runs on the event loop, so /health and /metrics need no thread at all.

__all__ = ["RequestTimeout", "run_blocking", "run_gated"]

API_KEY_HEADER = "X-API-Key"
_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                           description="the server's API key (index management; search too when keyed)")


class KeyGuard:
    """Counts wrong API keys per client address; past ``limit`` within ``window_s`` that client gets 429
    on every keyed request (right key or not) until its oldest failure leaves the window."""

    MAX_CLIENTS = 10_000

    def __init__(self, limit: int, window_s: float):
        self.limit, self.window_s = limit, window_s
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def retry_after(self, client: str) -> float | None:
        """Seconds until this client may try again, or None when it is not locked out."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            return self.window_s - (now - times[0]) if len(times) >= self.limit else None

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            times.append(now)
            self._failures[client] = times
            self._failures.move_to_end(client)
            while len(self._failures) > self.MAX_CLIENTS:
                self._failures.popitem(last=False)


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_config(request: Request) -> ServiceConfig:
    return request.app.state.config  # the app's (create_app's argument), which may tighten the state's limits


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def get_jobs(request: Request) -> BuildJobs:
    return request.app.state.jobs


async def get_gates(request: Request) -> Gates:
    return request.app.state.gates


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def key_is_valid(request: Request, given: str | None) -> bool:
    """For endpoints where the key is optional (/health): True only for the right key; a wrong one counts
    as a failed guess but is not refused."""
    config = get_config(request)
    if not given or config.api_key is None:
        return False
    guard: KeyGuard = request.app.state.key_guard
    if guard.retry_after(_client(request)) is not None:
        return False
    if secrets.compare_digest(given.encode(), config.api_key.encode()):
        return True
    guard.failed(_client(request))
    return False


def _check_key(request: Request, given: str | None) -> None:
    config = get_config(request)
    if config.api_key is None:
        raise HTTPException(403, "index management is disabled on this server: it has no API key configured")
    guard: KeyGuard = request.app.state.key_guard
    wait = guard.retry_after(_client(request))
    if wait is not None:
        raise HTTPException(429, f"too many wrong API keys from this address; retry in {math.ceil(wait)} s",
                            headers={"Retry-After": str(max(1, math.ceil(wait)))})
    if not given:
        raise HTTPException(401, f"missing API key: send it in the {API_KEY_HEADER} header",
                            headers={"WWW-Authenticate": "ApiKey"})
    if not secrets.compare_digest(given.encode(), config.api_key.encode()):
        guard.failed(_client(request))
        raise HTTPException(403, "invalid API key")


KeyHeader = Annotated[str | None, Security(_key_header)]


async def require_admin_key(request: Request, key: KeyHeader = None) -> None:
    _check_key(request, key)


async def require_search_key(request: Request, key: KeyHeader = None) -> None:
    if not get_config(request).open_search:
        _check_key(request, key)


async def optional_key(request: Request, key: KeyHeader = None) -> bool:
    return key_is_valid(request, key)


State = Annotated[ServiceState, Depends(get_state)]
Metrics = Annotated[ServiceMetrics, Depends(get_metrics)]
Jobs = Annotated[BuildJobs, Depends(get_jobs)]
GatesDep = Annotated[Gates, Depends(get_gates)]
HasKey = Annotated[bool, Depends(optional_key)]
SearchKey = Depends(require_search_key)
AdminKey = Depends(require_admin_key)


async def run_gated(gate: Gate, fn: Callable[..., Any], *args: Any, cost: float | None = None) -> Any:
    """Run a compute-bound library call on ``gate`` under the configured time limit: refused at once when
    the gate is full (503), stopped at the deadline (504). ``cost``: the expected seconds, when known."""
    return await gate.run(fn, *args, cost=cost)


async def run_blocking(state: ServiceState, fn: Callable[..., Any], *args: Any) -> Any:
    """A library call in a worker thread under the time limit, outside every gate (kept for callers that
    predate the gates; request handlers use ``run_gated``). On 504 the thread finishes alone."""
    import anyio

    try:
        with anyio.fail_after(state.config.timeout_s):
            return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
    except TimeoutError:
        raise RequestTimeout(state.config.timeout_s) from None
