"""ASGI middlewares that every request passes: request id, metrics, security headers, clients that go away,
forged cross-site requests, API key, body size limit.

Order, outermost first: `RequestContext` (X-Request-ID on every answer, inference requests counted in
/metrics), `SecurityHeaders` (CSP, nosniff, no referrer, no framing; no-store on the audit API), `Failures`
(a client gone mid-request, or an unexpected exception: one log line, never a traceback), `OneOfEach` (400 for a
header such as Host or Origin, or a query parameter, given twice), `SameOrigin` (403 for
a state-changing request from a page of another site, 415 for the body types any page can send), `ApiKey` (401
before any body is read), `BodyLimit` (413 on a declared Content-Length over the limit, and while streaming a
chunked body).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import anyio
from starlette.requests import ClientDisconnect

from bintally.serving.errors import RequestError, error_body
from bintally.serving.metrics import Metrics

log = logging.getLogger("bintally.serving")

REQUEST_ID_HEADER = "x-request-id"
CLIENT_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
OPEN_PATHS = ("/ping", "/metrics", "/v2/health/live", "/v2/health/ready", "/v1/session")  # never need the API key
# (/v1/session: the dashboard login, which checks a user's token itself)
OPEN_GET_PREFIXES = ("/static/", "/samples/")  # the web page's own files and the bundled public sample photos
OPEN_GET_PATHS = ("/", "/favicon.ico", "/samples", "/audit")  # the web pages themselves (their API calls need the key)
CLIENT_GONE = 499  # the code an inference request is counted with when its client went away before the answer


def is_inference(method: str, path: str) -> bool:
    """The requests counted in bintally_inference_requests_total (every protocol's inference endpoint)."""
    return method == "POST" and (path in ("/v1/count", "/invocations")
                                 or (path.startswith("/v2/models/") and path.endswith("/infer")))


def is_open(method: str, path: str) -> bool:
    if path in OPEN_PATHS or path.startswith("/v2/health/"):
        return True
    return method in ("GET", "HEAD") and (path in OPEN_GET_PATHS or path.startswith(OPEN_GET_PREFIXES))


async def send_json(send, status: int, body: dict, headers: dict | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestContext:
    """Accept the client's X-Request-ID (if sane) or make one; echo it; count inference requests in /metrics."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = header(scope, b"x-request-id")
        request_id = given if given and CLIENT_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        counted = is_inference(scope["method"], scope["path"])
        status = {"code": 500, "started": False}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message["headers"] = [*[(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"],
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        if not counted:
            return await self.app(scope, receive, send_with_id)
        start = time.perf_counter()
        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.inflight.dec()
            gone = scope["state"].get("client_gone") and not status["started"]
            self.metrics.observe_request(CLIENT_GONE if gone else status["code"], time.perf_counter() - start)


class ApiKey:
    """With a key configured, every path but health, /metrics, the pages and `user_prefixes` needs
    `Authorization: Bearer KEY`. `user_prefixes`: the audit API when users sign in to it (`--audit-auth users`), where
    the bearer is a user's token, checked by the route (bintally.serving.auth), not this key."""

    def __init__(self, app, key: str | None, metrics: Metrics, user_prefixes: tuple[str, ...] = ()):
        self.app, self.metrics, self.user_prefixes = app, metrics, user_prefixes
        self.key = key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or self.key is None or is_open(scope["method"], scope["path"])
                or is_user_path(scope["path"], self.user_prefixes)):
            return await self.app(scope, receive, send)
        given = header(scope, b"authorization") or ""
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key):
            return await self.app(scope, receive, send)
        self.metrics.reject("unauthorized")
        message = "wrong API key" if given else "missing API key: send the header 'Authorization: Bearer <key>'"
        await send_json(send, 401, error_body(message), {"WWW-Authenticate": 'Bearer realm="bintally"'})


def is_user_path(path: str, prefixes: tuple[str, ...]) -> bool:
    """Is `path` one of `prefixes` or below one (/v1/tasks, /v1/tasks/3; not /v1/tasksX)?"""
    return any(path == p or path.startswith(p + "/") for p in prefixes)


class BodyTooLarge(RequestError):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than the limit of {limit:,} bytes")


class BodyLimit:
    """413 for a body over `limit` bytes: at once from Content-Length, else as soon as the stream passes it."""

    def __init__(self, app, limit: int, metrics: Metrics):
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return await send_json(send, 400, error_body(f"bad Content-Length header {declared!r}"))
            if int(declared) > self.limit:
                self.metrics.reject("too_large")
                return await send_json(send, 413, error_body(str(BodyTooLarge(self.limit))), {"Connection": "close"})
        seen = {"bytes": 0, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                seen["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as e:  # raised while a handler read the body; no answer sent yet
            self.metrics.reject("too_large")
            if not seen["started"]:
                await send_json(send, 413, error_body(e.message), {"Connection": "close"})


# ---------------------------------------------------------------- headers and parameters given twice

# each read as one value; given twice, a check could read one copy and a handler (or a proxy) the other
SINGLE_HEADERS = (b"host", b"origin", b"referer", b"sec-fetch-site", b"authorization", b"content-type", b"content-length",
                  b"transfer-encoding", b"idempotency-key", b"x-request-id")


def given_twice(scope) -> str | None:
    """What a request gives twice that it may give once: a header of SINGLE_HEADERS or a query parameter (no route
    takes a list), else None."""
    names = [key.lower() for key, _ in scope.get("headers", ())]
    twice = next((name for name in SINGLE_HEADERS if names.count(name) > 1), None)
    if twice is not None:
        return f"the header {twice.decode().title()}"
    params = [name for name, _ in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)]
    seen: set[str] = set()  # the names as the app reads them (Starlette's parse): ?a=1&%61=2 repeats a
    repeated = next((p for p in params if p in seen or seen.add(p)), None)
    return None if repeated is None else f"the query parameter {repeated[:40]!r}"


class OneOfEach:
    """400 for a request that gives a header that means one thing (Host, Origin, Authorization, Content-Type, ...), or
    a query parameter, more than once: which copy counts is not guessed (RFC 9112 says so of Host)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        twice = given_twice(scope)
        if twice is None:
            return await self.app(scope, receive, send)
        self.metrics.reject("bad_input")
        await send_json(send, 400, error_body(f"{twice} is given more than once: give it once"), {"Connection": "close"})


# ---------------------------------------------------------------- forged cross-site requests

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # every other method may change state
TRUSTED_FETCH_SITES = ("same-origin", "none")  # "none": the user's own action (typed URL, bookmark)
FORGEABLE_TYPES = ("text/plain", "application/x-www-form-urlencoded")  # no route takes them; any page can send them
DEFAULT_PORTS = {"http": 80, "https": 443}
Authority = tuple[str, int]  # (host, port), the host lower-cased, the port explicit


def origin_parts(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a web origin `scheme://host[:port]` (http or https, no path), else None ("null", junk)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
        return None
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


def checked_origin(origin: str) -> str:
    """An allowed origin as `scheme://host:port`; ValueError saying why it is not an origin."""
    parts = origin_parts(origin)
    if parts is None:
        raise ValueError(f"{origin!r} is not a web origin: write http(s)://host[:port], no path")
    return "%s://%s:%d" % parts


def host_authority(host: str | None, scheme: str) -> Authority | None:
    """(host, port) the client addressed (the Host header), the port defaulting by `scheme`."""
    if not host:
        return None
    try:
        parts = urlsplit("//" + host.strip())
        port = parts.port
    except ValueError:
        return None
    return (parts.hostname.lower(), port or DEFAULT_PORTS.get(scheme, 80)) if parts.hostname else None


def foreign_origin(origin: str, scope, allowed: frozenset[str]) -> bool:
    """Is `origin` neither this server's own (the host and port the client addressed) nor one of `allowed`?

    The Host header is the browser's: a page of another site cannot set it. The scheme is left out of the comparison
    (a TLS proxy in front: the browser says https, uvicorn sees http), and one port speaks one scheme."""
    parts = origin_parts(origin)
    if parts is None:
        return True  # "null" (sandboxed frames, data: URLs, privacy redirects) and malformed origins
    if "%s://%s:%d" % parts in allowed:
        return False
    return (parts[1], parts[2]) != host_authority(header(scope, b"host"), parts[0])


def forgery(scope, allowed: frozenset[str]) -> str | None:
    """Why a state-changing request looks sent by a web page of another site (a browser adds Origin to every such
    request, and Sec-Fetch-Site where it knows it), else None. Software that is not a browser sends neither."""
    origin = header(scope, b"origin")
    if origin is not None and foreign_origin(origin, scope, allowed):
        return f"Origin {origin[:100]!r} is not this server's"
    site = header(scope, b"sec-fetch-site")
    if site is not None and site.strip().lower() not in TRUSTED_FETCH_SITES:
        if origin is None or origin_parts(origin) is None or "%s://%s:%d" % origin_parts(origin) not in allowed:
            return f"Sec-Fetch-Site is {site[:40]!r}"
    referer = header(scope, b"referer")
    if origin is None and referer and foreign_origin(referer_origin(referer), scope, allowed):
        return "its Referer is a page of another site"
    return None


def referer_origin(referer: str) -> str:
    try:
        parts = urlsplit(referer.strip())
    except ValueError:
        return "null"
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def body_type(scope) -> str:
    return (header(scope, b"content-type") or "").split(";")[0].strip().lower()


class SameOrigin:
    """Refuse every state-changing request a web page of another site could make a worker's browser send (CSRF),
    with or without an API key: 403 when its Origin (or Sec-Fetch-Site, or Referer) names another site; 415 for a
    text/plain or form-urlencoded body, which any page can send and no route takes. See docs/serving.md, "Security"."""

    def __init__(self, app, allowed_origins: tuple[str, ...], metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.allowed = frozenset(checked_origin(o) for o in allowed_origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            return await self.app(scope, receive, send)
        problem = forgery(scope, self.allowed)
        if problem is not None:
            self.metrics.reject("forbidden")
            log.warning("refused a cross-site %s %s: %s (request %s)", scope["method"], scope["path"], problem,
                        scope.get("state", {}).get("request_id", "?"))
            return await send_json(send, 403, error_body(
                f"refused: {problem}; a page of another site may not send {scope['method']} requests to this server "
                "(a proxy in front that rewrites Host: start the server with --allowed-origin)"))
        kind = body_type(scope)
        if kind in FORGEABLE_TYPES:
            self.metrics.reject("forbidden")
            return await send_json(send, 415, error_body(
                f"Content-Type {kind} is not taken here (any web page can send it): send application/json, "
                "multipart/form-data or the photo's own type (image/jpeg, image/png, ...)"))
        return await self.app(scope, receive, send)


# ---------------------------------------------------------------- response headers

PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# FastAPI's /docs and /redoc: its own inline start-up script, and Swagger UI / ReDoc from their CDN (online only)
DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
            "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; font-src https://fonts.gstatic.com; "
            "connect-src 'self'; worker-src blob:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"  # JSON, CSV, photos: nothing in them may run
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")
AUDIT_API_PREFIXES = ("/v1/audit-runs", "/v1/tasks", "/v1/labels", "/v1/snapshots", "/v1/session")  # answers a cache must never keep
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"), (b"cross-origin-resource-policy", b"same-origin"))


def content_security_policy(path: str, headers: list) -> str:
    if path in DOCS_PATHS:
        return DOCS_CSP
    media = next((v for k, v in headers if k.lower() == b"content-type"), b"").split(b";")[0].strip().lower()
    return PAGE_CSP if media == b"text/html" else API_CSP


def secured_headers(path: str, headers: list) -> list:
    """The answer's headers with the security headers (its own kept, but Cache-Control: no-store on the audit API)."""
    no_store = path.startswith(AUDIT_API_PREFIXES)
    kept = [(k, v) for k, v in headers if not (no_store and k.lower() == b"cache-control")]
    present = {k.lower() for k, _ in kept}
    added = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
    if b"content-security-policy" not in present:
        added.append((b"content-security-policy", content_security_policy(path, headers).encode()))
    if no_store:
        added.append((b"cache-control", b"no-store"))
    return kept + added


class SecurityHeaders:
    """Every answer says: no MIME sniffing, no referrer, never in a frame, a Content-Security-Policy (the pages run
    only their own script files), and for the audit API Cache-Control: no-store."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secured(message):
            if message["type"] == "http.response.start":
                message["headers"] = secured_headers(scope["path"], list(message.get("headers", [])))
            await send(message)

        await self.app(scope, receive, send_secured)


# ---------------------------------------------------------------- clients that go away, and the unexpected

AFTER_DISCONNECT = (ConnectionError, asyncio.CancelledError, anyio.ClosedResourceError, anyio.BrokenResourceError)


class Failures:
    """A client that went away mid-request (closed the connection during its upload, or before the answer) is one
    log line, not a traceback; so is an unexpected exception, answered 500 JSON with the request id (its traceback
    at --log-level debug)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False, "gone": False}

        async def watched_receive():
            message = await receive()
            state["gone"] = state["gone"] or message["type"] == "http.disconnect"
            return message

        async def watched_send(message):
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        except BaseException as e:
            if went_away(e, state["gone"]):
                scope.setdefault("state", {})["client_gone"] = True
                log.info("client went away during %s %s (%s; request %s)", scope["method"], scope["path"], e.__class__.__name__,
                         request_id(scope))
                return
            if not isinstance(e, Exception):
                raise  # cancelled while the client is still there (the server stopping), KeyboardInterrupt, ...
            log.error("unexpected %s during %s %s: %s at %s (request %s)", e.__class__.__name__, scope["method"], scope["path"],
                      one_line(e), where(e), request_id(scope))
            log.debug("traceback of request %s", request_id(scope), exc_info=e)
            if not state["started"]:
                await send_json(send, 500, error_body(f"internal error ({e.__class__.__name__}); request id {request_id(scope)}"))


def went_away(e: BaseException, disconnected: bool) -> bool:
    """Is `e` what a handler meets when its client has gone: the end of the request stream, or (once the server said the
    client disconnected) a reset, a broken pipe or the handler's cancellation?"""
    if isinstance(e, BaseExceptionGroup):
        return all(went_away(inner, disconnected) for inner in e.exceptions)
    return isinstance(e, (ClientDisconnect, anyio.EndOfStream)) or (disconnected and isinstance(e, AFTER_DISCONNECT))


def request_id(scope) -> str:
    return scope.get("state", {}).get("request_id", "?")


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def where(e: BaseException) -> str:
    """file:line of the innermost frame of `e`'s traceback."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb is not None else "?"
