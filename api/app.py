"""``create_app(config)``: the FastAPI service, its error handling, limits, metrics and web page.

Errors: input errors are 4xx with a one-line ``detail``; nothing a client sees carries a stack
trace (unexpected failures are logged here and answered with a plain 500). Request bodies over
``max_body_bytes`` get 413 before they are read; slow library calls get 504 after ``timeout_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from sparsa import __version__
from sparsa.api.deps import RequestTimeout
from sparsa.api.jobs import BuildJobs
from sparsa.api.metrics import ServiceMetrics
from sparsa.api.routers import health, indexes, qa, search
from sparsa.api.settings import ServiceConfig
from sparsa.api.state import NotConfiguredError, NotReadyError, ServiceState
from sparsa.errors import ConfigError, DataFormatError, IndexCorruptError, SparsaError, UnknownNameError

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def _error(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    """Pydantic's errors as one line, without echoing the (possibly huge) input back."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        if err.get("type") == "json_invalid":
            parts.append(f"the request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
        else:
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _describe_validation(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(NotReadyError)
    async def _not_ready(request: Request, exc: NotReadyError) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": "5"})

    @app.exception_handler(RequestTimeout)
    async def _timeout(request: Request, exc: RequestTimeout) -> JSONResponse:
        return _error(504, f"the request took longer than the server's limit of {exc.seconds:g} s")

    @app.exception_handler(SparsaError)
    async def _sparsa(request: Request, exc: SparsaError) -> JSONResponse:
        if isinstance(exc, IndexCorruptError):
            return _error(409, f"index refused: {exc}")
        if isinstance(exc, NotConfiguredError):
            return _error(exc.status, str(exc))
        if isinstance(exc, (ConfigError, DataFormatError, UnknownNameError)):
            return _error(400, str(exc))
        logger.error("request failed: %s", exc)
        return _error(500, f"internal error: {exc}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, "internal error (logged on the server)")


class GuardMiddleware:
    """Pure ASGI: refuses bodies over the limit (413), rejects non-UTF-8 JSON (400), records metrics."""

    def __init__(self, app, max_body_bytes: int, metrics: ServiceMetrics):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def send_tracking(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if isinstance(body, JSONResponse):
                return await body(scope, receive, send_tracking)
            delivered = [False]

            async def replay():
                if delivered[0]:
                    return await receive()
                delivered[0] = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send_tracking)
        finally:
            route = scope.get("route")
            self.metrics.observe(getattr(route, "path", "unmatched"), scope["method"], status[0], started)

    async def _read_body(self, scope, receive) -> bytes | JSONResponse:
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = _error(413, f"request body too large: the limit is {self.max_body_bytes} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return too_big
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and b"json" in headers.get(b"content-type", b""):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                return _error(400, f"the request body is not valid UTF-8 (byte {exc.start})")
        return body


def create_app(config: ServiceConfig, state: ServiceState | None = None) -> FastAPI:
    """The service. ``state``: already loaded resources (``sparsa serve`` loads before listening);
    without it, loading starts in the background at startup and ``/health`` says when it is ready."""
    service = state or ServiceState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not service.loaded.is_set():
            threading.Thread(target=service.load, name="sparsa-load", daemon=True).start()
        yield

    app = FastAPI(title="sparsa", version=__version__, lifespan=lifespan,
                  description="Learned sparse retrieval, reranking and retrieval-augmented QA over HTTP.")
    app.state.service = service
    app.state.metrics = ServiceMetrics()
    app.state.jobs = BuildJobs(config.index_root, config.data_dir)
    _install_error_handlers(app)
    for router in (search.router, qa.router, health.router, indexes.router):
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(GuardMiddleware, max_body_bytes=config.max_body_bytes, metrics=app.state.metrics)
    return app
