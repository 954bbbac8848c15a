"""ASGI middlewares that every request passes: request id, metrics accounting, API key, body size limit.

Order, outermost first: `RequestContext` (X-Request-ID on every answer, inference requests counted in
/metrics), `ApiKey` (401 before any body is read), `BodyLimit` (413 on a declared Content-Length over
the limit, and while streaming a chunked body).
"""

from __future__ import annotations

import hmac
import json
import re
import time
import uuid

from bintally.serving.errors import RequestError, error_body
from bintally.serving.metrics import Metrics

REQUEST_ID_HEADER = "x-request-id"
CLIENT_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
OPEN_PATHS = ("/ping", "/metrics", "/v2/health/live", "/v2/health/ready")  # never need the API key
OPEN_GET_PREFIXES = ("/static/", "/samples/")  # the web page's own files and the bundled public sample photos
OPEN_GET_PATHS = ("/", "/favicon.ico", "/samples", "/audit")  # the web pages themselves (their API calls need the key)


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
        status = {"code": 500}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
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
            self.metrics.observe_request(status["code"], time.perf_counter() - start)


class ApiKey:
    """With a key configured, every path but health, /metrics and the page needs `Authorization: Bearer KEY`."""

    def __init__(self, app, key: str | None, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.key = key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or is_open(scope["method"], scope["path"]):
            return await self.app(scope, receive, send)
        given = header(scope, b"authorization") or ""
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key):
            return await self.app(scope, receive, send)
        self.metrics.reject("unauthorized")
        message = "wrong API key" if given else "missing API key: send the header 'Authorization: Bearer <key>'"
        await send_json(send, 401, error_body(message), {"WWW-Authenticate": 'Bearer realm="bintally"'})


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
