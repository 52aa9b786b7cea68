"""``create_app(config)``: the FastAPI service, its error handling, limits, metrics and web page.

Errors: every error is ``{"detail": "<one line>"}`` (``ErrorBody``, 422 included, and the OpenAPI
schema says so); nothing a client sees carries a stack trace (unexpected failures are logged here and
answered with a plain 500). Request bodies over ``max_body_bytes`` get 413 before they are read, bodies
not received within ``limits.body_timeout_s`` get 408; full endpoint queues answer 503 with
``Retry-After`` and work past ``timeout_s`` is stopped and answered 504 (``api/admission.py``).
``/docs`` is a page of this server (no CDN): it lists the operations of ``/openapi.json``.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from sparsa import __version__
from sparsa.api.admission import Gates, Overloaded, RequestTimeout
from sparsa.api.deps import KeyGuard
from sparsa.api.identity import IndexMismatchError
from sparsa.api.jobs import BuildJobs, JobConflict, TooManyBuilds
from sparsa.api.metrics import ServiceMetrics
from sparsa.api.routers import health, indexes, qa, search
from sparsa.api.settings import ServiceConfig
from sparsa.api.state import NotConfiguredError, NotReadyError, ServiceState
from sparsa.deadline import DeadlineExceeded
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
            parts.append("the request body is not valid JSON "
                         f"({err.get('ctx', {}).get('error', 'parse error')})")
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

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return _error(503, exc.detail, {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(SparsaError)
    async def _sparsa(request: Request, exc: SparsaError) -> JSONResponse:
        if isinstance(exc, IndexCorruptError):
            return _error(409, f"index refused: {exc}")
        if isinstance(exc, (IndexMismatchError, JobConflict)):
            return _error(409, str(exc))
        if isinstance(exc, TooManyBuilds):
            return _error(429, str(exc), {"Retry-After": str(exc.retry_after)})
        if isinstance(exc, DeadlineExceeded):
            return _error(504, f"the request passed the server's time limit; its work was stopped ({exc})")
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

    def __init__(self, app, max_body_bytes: int, metrics: ServiceMetrics, body_timeout_s: float = 10.0):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def send_tracking(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            body = None
            with anyio.move_on_after(self.body_timeout_s):
                body = await self._read_body(scope, receive)
            if body is None:  # a client that sends its body too slowly holds nothing for long
                body = _error(408, f"the request body did not arrive within {self.body_timeout_s:g} s",
                              {"Connection": "close"})
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


OPEN_PATHS = ("/search", "/rerank", "/qa")  # need the key only with keyed search
DESCRIPTION = ("Learned sparse retrieval, reranking and retrieval-augmented QA over HTTP. Every error is "
               '`{"detail": "<one line>"}`; 503 (busy, not ready) and 429 carry `Retry-After`.')


def _openapi(app: FastAPI, config: ServiceConfig) -> dict:
    """FastAPI's schema, made true for this server: errors are ``ErrorBody`` (422 too), /search, /rerank
    and /qa need the key only when the server is keyed, /health takes it optionally."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, operations in spec["paths"].items():
        for op in operations.values():
            responses = op.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "the request does not match the schema", "content": error}
            if path in OPEN_PATHS and config.open_search:
                op.pop("security", None)
                for code in ("401", "403", "429"):
                    responses.pop(code, None)
            if path == "/health":
                op["security"] = [{}, *op.get("security", [])]  # optional: with it, paths are shown
    app.openapi_schema = spec
    return spec


def create_app(config: ServiceConfig, state: ServiceState | None = None) -> FastAPI:
    """The service. ``state``: already loaded resources (``sparsa serve`` loads before listening);
    without it, loading starts in the background at startup and ``/health`` says when it is ready."""
    service = state or ServiceState(config)
    limits = config.limits

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not service.loaded.is_set():
            threading.Thread(target=service.load, name="sparsa-load", daemon=True).start()
        try:
            yield
        finally:  # builds die with the server; queued work is dropped
            app.state.gates.shutdown()
            await anyio.to_thread.run_sync(app.state.jobs.shutdown)

    app = FastAPI(title="sparsa", version=__version__, lifespan=lifespan, description=DESCRIPTION,
                  docs_url=None, redoc_url=None)
    app.state.service, app.state.config = service, config
    app.state.metrics = ServiceMetrics()
    app.state.jobs = BuildJobs(config.index_root, config.data_dir, limits)
    app.state.gates = Gates(limits, config.timeout_s)
    app.state.key_guard = KeyGuard(limits.key_failures, limits.key_window_s)
    _install_error_handlers(app)
    for router in (search.router, qa.router, health.router, indexes.router):
        app.include_router(router)
    app.openapi = lambda: _openapi(app, config)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(GuardMiddleware, max_body_bytes=config.max_body_bytes, metrics=app.state.metrics,
                       body_timeout_s=limits.body_timeout_s)
    return app
