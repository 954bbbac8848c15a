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
from bintally.serving.audit_api import AuditService, audit_router
from bintally.serving.config import ServeConfig
from bintally.serving.dataplane import DataPlane
from bintally.serving.errors import RequestError, error_response
from bintally.serving.rest import rest_router
from bintally.serving.security import AUDIT_API_PREFIXES, ApiKey, BodyLimit, Failures, OneOfEach, RequestContext, SameOrigin, SecurityHeaders
from bintally.serving.v2 import v2_router
from bintally.serving.web import web_router
from bintally.serving.workers import end_with_supervisor, graceful_stop_s

log = logging.getLogger("bintally.serving")
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
    plane = plane or DataPlane(config)
    audit = AuditService(config, plane, audit_store)
    app = FastAPI(title="bintally count server", version=bintally.__version__,
                  lifespan=life_cycle(plane, audit, ShutdownHook(plane, config.shutdown_delay_s), load_on_startup),
                  description="Counts the items in Amazon Bin Image Dataset photos. Errors are JSON {\"error\": ...}. "
                              "See docs/serving.md.")
    app.state.plane, app.state.config, app.state.audit = plane, config, audit
    add_error_handlers(app, plane)
    add_routes(app, plane, config, audit)
    # added last = outermost: RequestContext, SecurityHeaders, Failures, OneOfEach, SameOrigin, ApiKey, then BodyLimit
    app.add_middleware(BodyLimit, limit=config.max_body_bytes, metrics=plane.metrics)
    app.add_middleware(ApiKey, key=config.api_key, metrics=plane.metrics, user_prefixes=user_prefixes(config))
    app.add_middleware(SameOrigin, allowed_origins=config.allowed_origins, metrics=plane.metrics)
    app.add_middleware(OneOfEach, metrics=plane.metrics)
    app.add_middleware(Failures)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestContext, metrics=plane.metrics)
    return app


def user_prefixes(config: ServeConfig) -> tuple[str, ...]:
    """The paths a user's token guards instead of the API key: the audit API, when it has users."""
    return AUDIT_API_PREFIXES if config.audit_db and config.audit_auth == "users" else ()


def life_cycle(plane: DataPlane, audit: AuditService, hook: ShutdownHook, load_on_startup: bool):
    """Start-up (load the model if asked, open the audit store, take the signals) and the orderly end."""

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
            await plane.fetcher.aclose()
            await asyncio.to_thread(plane.close)
            audit.close()

    return lifespan


def add_error_handlers(app: FastAPI, plane: DataPlane) -> None:
    """Every refusal and every failure as JSON {"error": ...}: ours, the framework's, and the unexpected (500)."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError) -> JSONResponse:
        if e.counted:
            plane.metrics.reject(e.reason)
        return error_response(e.status, e.message, e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg', '').removeprefix('Value error, ')}"
                             for err in e.errors()[:5])
        return error_response(400, f"invalid request: {problems}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:  # what the Failures middleware did not see
        log.error("unexpected %s: %s (request %s)", e.__class__.__name__, e, getattr(request.state, "request_id", "?"))
        return error_response(500, f"internal error ({e.__class__.__name__}); request id {getattr(request.state, 'request_id', '?')}")


def add_routes(app: FastAPI, plane: DataPlane, config: ServeConfig, audit: AuditService) -> None:
    """The protocol adapters over the one data plane, the audit API and /metrics."""

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(plane.metrics.render(), media_type=plane.metrics.content_type)

    app.include_router(rest_router(plane, config))
    app.include_router(v2_router(plane, config))
    app.include_router(web_router(plane, config))
    app.include_router(audit_router(audit))


def create_app_from_env() -> FastAPI:
    """The factory of each uvicorn worker process (`bintally serve --workers N`)."""
    config = ServeConfig.from_env()
    end_with_supervisor(graceful_stop_s(config))
    return create_app(config, DataPlane(config), load_on_startup=True)
