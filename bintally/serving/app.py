"""The ASGI application: the data plane, its protocol routers, the middlewares, /metrics and the life cycle.

`create_app(config, plane)` builds the app around a data plane (loaded or not: /ping says 503 until it
is); `create_app_from_env()` is the factory each uvicorn worker process calls (`--workers N`), with the
config as JSON in BINTALLY_SERVE_CONFIG, loading the model at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

import bintally
from bintally.serving.config import ServeConfig
from bintally.serving.dataplane import DataPlane, RequestError
from bintally.serving.security import ApiKey, BodyLimit, RequestContext

log = logging.getLogger("bintally.serving")
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class ShutdownHook:
    """On SIGTERM/SIGINT: readiness false at once, then (after `delay` s, for load balancers to notice) hand the
    signal to uvicorn, which stops accepting connections, lets requests in flight finish and runs the lifespan end."""

    def __init__(self, plane: DataPlane, delay: float):
        self.plane, self.delay = plane, delay
        self.previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # a server in a thread (tests): signals stay with the main thread
        for sig in SHUTDOWN_SIGNALS:
            previous = signal.getsignal(sig)
            if callable(previous):
                self.previous[sig] = previous
                signal.signal(sig, self.handle)

    def handle(self, sig, frame) -> None:
        first = not self.plane.shutting_down
        self.plane.begin_shutdown()
        previous = self.previous[sig]
        if first and self.delay > 0:
            threading.Timer(self.delay, previous, (sig, frame)).start()
        else:
            previous(sig, frame)

    def restore(self) -> None:
        for sig, previous in self.previous.items():
            if signal.getsignal(sig) == self.handle:
                signal.signal(sig, previous)
        self.previous.clear()


def create_app(config: ServeConfig, plane: DataPlane | None = None, load_on_startup: bool = False, audit_store=None) -> FastAPI:
    """The app around `plane` (made from `config` if not given); with `load_on_startup`, the model loads before
    the server accepts connections (a failure stops the server). With `config.audit_db`, the audit store
    (`audit_store`, else opened at start-up, schema upgraded) backs the audit API and the dashboard at /audit."""
    from bintally.serving.audit_api import AuditService, audit_router

    plane = plane or DataPlane(config)
    hook = ShutdownHook(plane, config.shutdown_delay_s)
    audit = AuditService(config, plane, audit_store)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load_on_startup and not plane.loaded:
            await asyncio.to_thread(plane.load)
        await asyncio.to_thread(audit.open)
        hook.install()
        try:
            yield
        finally:
            hook.restore()
            plane.begin_shutdown()
            await plane.sources.aclose()
            await asyncio.to_thread(plane.close)
            audit.close()

    app = FastAPI(title="bintally count server", version=bintally.__version__, lifespan=lifespan,
                  description="Counts the items in Amazon Bin Image Dataset photos. Errors are JSON {\"error\": ...}. "
                              "See docs/serving.md.")
    app.state.plane, app.state.config, app.state.audit = plane, config, audit

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError) -> JSONResponse:
        plane.metrics.reject(e.reason)
        return error_response(e.status, e.message, e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg', '')}" for err in e.errors()[:5])
        return error_response(400, f"invalid request: {problems}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.error("unexpected %s: %s (request %s)", e.__class__.__name__, e, getattr(request.state, "request_id", "?"))
        return error_response(500, f"internal error ({e.__class__.__name__}); request id {getattr(request.state, 'request_id', '?')}")

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(plane.metrics.render(), media_type=plane.metrics.content_type)

    from bintally.serving.rest import rest_router
    from bintally.serving.v2 import v2_router
    from bintally.serving.web import web_router

    app.include_router(rest_router(plane, config))
    app.include_router(v2_router(plane, config))
    app.include_router(web_router(plane, config))
    app.include_router(audit_router(audit))

    # added last = outermost: RequestContext, then ApiKey, then BodyLimit
    app.add_middleware(BodyLimit, limit=config.max_body_bytes, metrics=plane.metrics)
    app.add_middleware(ApiKey, key=config.api_key, metrics=plane.metrics)
    app.add_middleware(RequestContext, metrics=plane.metrics)
    return app


def create_app_from_env() -> FastAPI:
    """The factory of each uvicorn worker process (`bintally serve --workers N`)."""
    config = ServeConfig.from_env()
    return create_app(config, DataPlane(config), load_on_startup=True)
