"""Dashboard sessions: log in with a user's token, get an HttpOnly cookie and a CSRF token, log out.

    POST   /v1/session        {"token": "btk_..."} (or Authorization: Bearer btk_...) -> Set-Cookie and
                              {"user", "roles", "csrf"}; 401 for a token that does not hold, 429 after too many
                              failures from one address
    GET    /v1/session        who the cookie's session belongs to, with its CSRF token (a page reload); 401 without one
    DELETE /v1/session        ends the session (X-CSRF-Token required) and clears the cookie
    GET    /v1/session/tasks  the counter's list: tasks open to them (unassigned or theirs), blind fields only

The cookie holds only a random secret (its SHA-256 is stored); the session dies with the user's token (rotated or
disabled). A request carrying the cookie proves who it is from only together with the session's CSRF token in the
X-CSRF-Token header on every state-changing method (`cookie_principal`); the cookie is SameSite=Strict, and the
SameOrigin middleware refuses cross-site POST/DELETE before any of this runs.

With `--audit-auth open` there are no users: GET /v1/session says so ({"auth": "open"}) and the dashboard shows every
view, as before users existed.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import deque

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from bintally.audit import people
from bintally.serving.bodies import json_object, media_type
from bintally.serving.errors import RequestError

log = logging.getLogger("bintally.serving")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_FAILURES, FAILURE_WINDOW_S = 10, 60.0  # failed logins per client address per minute, then 429
TASK_FIELDS = ("id", "run_id", "bin_id", "snapshot_id", "status", "assignee")  # a counter's list: never a record or prediction
COUNTABLE = {"requested": 0, "recount_requested": 1}


def fail(status: int, message: str, headers: dict | None = None) -> RequestError:
    return RequestError(status, message, headers, counted=False)


def users_required(config) -> bool:
    return config.audit_auth == "users"


def request_origin(request: Request) -> str:
    """Where a request came from, for the event log: "http 127.0.0.1:5342"."""
    client = request.client
    return f"{request.url.scheme} {client.host}:{client.port}" if client else request.url.scheme


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
    """The principal of the request's dashboard session cookie (blocking: call it in a thread). Unauthorized without
    a live session; Forbidden for a state-changing method whose X-CSRF-Token header is not the session's."""
    principal, csrf = people.session_principal(store, request.cookies.get(people.SESSION_COOKIE), request_origin(request))
    if request.method not in SAFE_METHODS:
        check_csrf(request, csrf)
    return principal


def check_csrf(request: Request, csrf: str) -> None:
    given = request.headers.get(people.CSRF_HEADER) or ""
    if not hmac.compare_digest(given.encode(), csrf.encode()):
        raise people.Forbidden(f"missing or wrong {people.CSRF_HEADER} header: the dashboard sends its session's token")


def who(principal: people.Principal, csrf: str | None) -> dict:
    return {"auth": "users", "user": principal.name, "roles": [r for r in people.ROLES if principal.has(r)], "csrf": csrf}


def set_cookie(response: Response, request: Request, secret: str) -> None:
    response.set_cookie(people.SESSION_COOKIE, secret, max_age=people.SESSION_HOURS * 3600, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(people.SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")


def refusal(e: people.Unauthorized | people.Forbidden) -> RequestError:
    if isinstance(e, people.Forbidden):
        return fail(403, str(e))
    return fail(401, str(e), {"WWW-Authenticate": 'Bearer realm="bintally"'})


async def as_user(service, fn, *args):
    """fn(store, *args) through the audit service (its database refusals as JSON), Unauthorized as 401 and
    Forbidden as 403."""

    def attempt(store, *args):
        try:
            return fn(store, *args), None
        except (people.Unauthorized, people.Forbidden) as e:
            return None, e

    result, refused = await service.call(attempt, *args)
    if refused is not None:
        raise refusal(refused)
    return result


def counter_tasks(store, principal: people.Principal) -> list[dict]:
    """The tasks `principal` (a counter) may count now: open, unassigned or assigned to them, and (with the store's
    separation of recounts) not a recount of their own first count. Blind fields only."""
    from sqlalchemy import select

    from bintally.audit import queries
    from bintally.audit.schema import CountObservation

    people.require(principal, "counter")
    rows = [r for status in COUNTABLE for r in queries.list_tasks(store, status=status) if r["assignee"] in (None, principal.name)]
    with store.session() as session:
        separate = people.setting(session, people.SEPARATE_RECOUNT)
        mine = set(session.scalars(select(CountObservation.task_id).where(CountObservation.counted_by == principal.name)))
    return [{k: r[k] for k in TASK_FIELDS} | {"count_index": COUNTABLE[r["status"]]}
            for r in rows if not (separate and r["id"] in mine)]


def session_router(service) -> APIRouter:
    """The login, who-am-I, logout and counter task list routes of the dashboard (`service`: the AuditService)."""
    router = APIRouter(tags=["Dashboard sessions"], include_in_schema=service.enabled)
    throttle = LoginThrottle()

    @router.post("/v1/session", summary="Log in to the dashboard with a user's token: an HttpOnly session cookie and a CSRF token")
    async def login(request: Request):
        service.require()
        if not users_required(service.config):
            raise fail(400, "the server runs with --audit-auth open: the dashboard needs no login")
        address = client_address(request)
        wait_s = throttle.wait_s(address)
        if wait_s > 0:
            raise fail(429, "too many failed logins from this address: wait a minute", {"Retry-After": str(int(wait_s) + 1)})
        token = given_token(request, await request.body())
        try:
            principal = await as_user(service, people.authenticate, token, request_origin(request))
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
        if not users_required(service.config):
            return {"auth": "open", "user": None, "roles": list(people.ROLES), "csrf": None}
        origin = request_origin(request)
        principal, csrf = await as_user(service, people.session_principal, request.cookies.get(people.SESSION_COOKIE), origin)
        return who(principal, csrf)

    @router.delete("/v1/session", summary="Log out: end the session and clear its cookie")
    async def logout(request: Request):
        service.require()
        secret = request.cookies.get(people.SESSION_COOKIE)
        if users_required(service.config) and secret:
            principal = await as_user(service, cookie_principal, request)
            await service.call(people.close_session, secret, principal)
        response = Response(status_code=204)
        clear_cookie(response, request)
        return response

    @router.get("/v1/session/tasks", summary="The tasks the logged-in counter may count (blind: bin and photo only)")
    async def my_tasks(request: Request):
        service.require()
        if not users_required(service.config):
            principal = people.Principal("open", people.ALL_ROLES, "open", request_origin(request))
        else:
            principal = await as_user(service, cookie_principal, request)
        rows = await as_user(service, counter_tasks, principal)
        return {"tasks": [r | {"image_url": f"/v1/snapshots/{r['snapshot_id']}/image"} for r in rows]}

    return router
