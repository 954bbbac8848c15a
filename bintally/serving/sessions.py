"""Dashboard sessions: log in with a user's token, get an HttpOnly cookie and a CSRF token, log out.

    POST   /v1/session        {"token": "btk_..."} (or Authorization: Bearer btk_...) -> Set-Cookie and
                              {"user", "roles", "csrf"}; 401 for a token that does not hold, 429 after too many
                              failures from one address
    GET    /v1/session        who the cookie's session belongs to, with its CSRF token (a page reload); 401 without one
    DELETE /v1/session        ends the session (X-CSRF-Token required) and clears the cookie

The cookie holds only a random secret (its SHA-256 is stored); the session dies with the user's token (rotated or
disabled). A request carrying the cookie proves who it is from only together with the session's CSRF token in the
X-CSRF-Token header on every state-changing method (`cookie_principal`); the cookie is SameSite=Strict, and the
SameOrigin middleware refuses cross-site POST/DELETE before any of this runs.

With `--audit-auth open` there are no users: GET /v1/session says so ({"auth": "open"}) and the dashboard shows every
view, as before users existed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from bintally.audit import people
from bintally.serving import auth
from bintally.serving.bodies import json_object, media_type
from bintally.serving.errors import RequestError
from bintally.serving.errors import uncounted as fail
from bintally.serving.security import SAFE_METHODS

log = logging.getLogger("bintally.serving")
MAX_FAILURES, FAILURE_WINDOW_S = 10, 60.0  # failed logins per client address per minute, then 429


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"


class LoginThrottle:
    """At most `limit` failed logins per client address within `window` seconds; beyond that every login from the
    address (a right token too) is refused with 429 until the oldest failure ages out."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW_S):
        self.limit, self.window = limit, window
        self.failures: dict[str, deque] = {}
        self.lock = threading.Lock()

    def wait_s(self, address: str) -> float:
        """Seconds until `address` may try again (0: now)."""
        with self.lock:
            recent = self.pruned(address)
            return 0.0 if len(recent) < self.limit else recent[0] + self.window - time.monotonic()

    def failed(self, address: str) -> None:
        with self.lock:
            if len(self.failures) > 10_000:
                self.failures = {a: d for a in list(self.failures) if (d := self.pruned(a))}
            self.failures[address] = self.pruned(address)
            self.failures[address].append(time.monotonic())

    def pruned(self, address: str) -> deque:
        recent = self.failures.get(address, deque())
        while recent and recent[0] <= time.monotonic() - self.window:
            recent.popleft()
        return recent


def given_token(request: Request, body: bytes) -> str | None:
    """The token of a login: the JSON body's "token", else a bearer Authorization header."""
    if body.strip():
        if media_type(request) != "application/json":
            raise fail(415, f"send Content-Type: application/json, not {media_type(request) or 'none'}")
        doc = json_object(body, 'expected a JSON object {"token": "btk_..."}')
        unknown = sorted(set(doc) - {"token"})
        if unknown:
            raise fail(400, f"unknown field(s) {', '.join(unknown)}: expected token")
        if not isinstance(doc.get("token"), str):
            raise fail(400, 'token must be text: {"token": "btk_..."}')
        return doc["token"]
    scheme, _, value = (request.headers.get("authorization") or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def cookie_principal(store, request: Request) -> people.Principal:
    """The principal of the request's dashboard session cookie (blocking: call it through the service). Unauthorized
    without a live session; Forbidden for a state-changing method whose X-CSRF-Token header is not the session's."""
    principal, csrf = people.session_principal(store, request.cookies.get(people.SESSION_COOKIE), auth.origin_of(request))
    if request.method not in SAFE_METHODS and not auth.csrf_matches(request.headers.get(people.CSRF_HEADER), csrf):
        raise people.Forbidden(f"missing or wrong {people.CSRF_HEADER} header: the dashboard sends its session's token")
    return principal


def who(principal: people.Principal, csrf: str | None) -> dict:
    return {"auth": "users", "user": principal.name, "roles": [r for r in people.ROLES if principal.has(r)], "csrf": csrf}


def set_cookie(response: Response, request: Request, secret: str) -> None:
    response.set_cookie(people.SESSION_COOKIE, secret, max_age=people.SESSION_HOURS * 3600, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(people.SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")


def session_router(service) -> APIRouter:
    """The login, who-am-I and logout routes of the dashboard (`service`: the AuditService)."""
    router = APIRouter(tags=["Dashboard sessions"], include_in_schema=service.enabled)
    throttle = LoginThrottle()

    @router.post("/v1/session", summary="Log in to the dashboard with a user's token: an HttpOnly session cookie and a CSRF token")
    async def login(request: Request):
        service.require()
        if not auth.users_mode(service):
            raise fail(400, "the server runs with --audit-auth open: the dashboard needs no login")
        address = client_address(request)
        wait_s = throttle.wait_s(address)
        if wait_s > 0:
            raise fail(429, "too many failed logins from this address: wait a minute", {"Retry-After": str(int(wait_s) + 1)})
        token = given_token(request, await request.body())
        try:
            principal = await service.call(people.authenticate, token, auth.origin_of(request))
        except RequestError as e:
            if e.status != 401:
                raise
            throttle.failed(address)
            log.warning("refused a dashboard login from %s (request %s)", address, getattr(request.state, "request_id", "?"))
            raise
        secret, csrf = await service.call(people.open_session, principal)
        response = JSONResponse(who(principal, csrf))
        set_cookie(response, request, secret)
        return response

    @router.get("/v1/session", summary="Who the dashboard session belongs to, its roles and CSRF token")
    async def current(request: Request):
        service.require()
        if not auth.users_mode(service):
            return {"auth": "open", "user": None, "roles": list(people.ROLES), "csrf": None}
        origin = auth.origin_of(request)
        principal, csrf = await service.call(people.session_principal, request.cookies.get(people.SESSION_COOKIE), origin)
        return who(principal, csrf)

    @router.delete("/v1/session", summary="Log out: end the session and clear its cookie")
    async def logout(request: Request):
        service.require()
        secret = request.cookies.get(people.SESSION_COOKIE)
        if auth.users_mode(service) and secret:
            principal = await service.call(cookie_principal, request)
            await service.call(people.close_session, secret, principal)
        response = Response(status_code=204)
        clear_cookie(response, request)
        return response

    return router
