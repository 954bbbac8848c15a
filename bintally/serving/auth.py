"""Who is calling the audit API, and whether they may: one check at the top of every audit route.

With `--audit-auth users` (the default) a request names its user by `Authorization: Bearer btk_...` (a token of
`bintally audit user add` or `token rotate`), or by the dashboard's session cookie; a state-changing request on a
session also carries the session's CSRF token in `X-CSRF-Token`. No, a bad, rotated or revoked token, or a disabled
user: 401 with `WWW-Authenticate`. A user without the route's role: 403. The token is never echoed, logged or stored.

With `--audit-auth open` there are no users: every caller holds every role and names itself in the request (`by`,
`created_by`), as before users existed. It suits one trusted person on a private machine, nothing more.
"""

from __future__ import annotations

import hmac
from dataclasses import replace

from starlette.requests import Request

from bintally.audit import people
from bintally.serving.errors import RequestError, uncounted
from bintally.serving.security import SAFE_METHODS

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="bintally audit"'}
OPEN_NAME = "api"  # who reads in open mode; a write is signed by the name in its body
NO_USERS = "no users yet: bintally audit user add NAME --role admin (then give each person a user and a role)"
PERSON_FIELDS = ("by", "created_by")  # body fields that name a person: only open mode takes them


def unauthorized(message: str) -> RequestError:
    return uncounted(401, message, CHALLENGE)


def forbidden(message: str) -> RequestError:
    return uncounted(403, message)


def origin_of(request: Request) -> str:
    """Where a request came from, for the event log: the peer's address (a proxy's own, behind one)."""
    client = request.client
    return f"http {client.host}:{client.port}" if client else "http"


def users_mode(service) -> bool:
    return service.config.audit_auth == "users"


async def principal(service, request: Request, *roles: str) -> people.Principal:
    """The caller, holding one of `roles`; 401 or 403 (a RequestError) otherwise."""
    if not users_mode(service):
        service.require()
        return people.Principal(OPEN_NAME, people.ALL_ROLES, "open", origin_of(request))
    who = await identify(service, request)
    try:
        return people.require(who, *roles)
    except people.Forbidden as e:
        raise forbidden(str(e)) from None


async def identify(service, request: Request) -> people.Principal:
    """The user of the request's bearer token, else of its dashboard session (with the CSRF check on a write)."""
    origin = origin_of(request)
    given = request.headers.get("authorization")
    if given is not None:
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("send the token as 'Authorization: Bearer <token>'")
        return await service.call(people.authenticate, token.strip(), origin)
    secret = request.cookies.get(people.SESSION_COOKIE)
    if secret:
        who, csrf = await service.call(people.session_principal, secret, origin)
        if request.method not in SAFE_METHODS and not csrf_matches(request.headers.get(people.CSRF_HEADER), csrf):
            raise forbidden(f"missing or wrong {people.CSRF_HEADER} header: reload the dashboard")
        return who
    if not await service.call(people.has_users):
        raise unauthorized(NO_USERS)
    raise unauthorized("no token: send 'Authorization: Bearer <token>' (from bintally audit user add or token rotate), "
                       "or log in to the dashboard")


def csrf_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode("latin-1", "replace"), expected.encode())


def signed(who: people.Principal, doc: dict, key: str, default: str | None = None) -> people.Principal:
    """The principal a write is signed by: in users mode the token's user (a body naming a person is refused: 400),
    in open mode the name the body gives in `key` (else `default`)."""
    named = doc.get(key) or default
    if who.kind != "open":
        if any(doc.get(k) is not None for k in PERSON_FIELDS):
            raise RequestError(400, f"{key}: the name comes from your token; leave {key} out of the request", counted=False)
        return who
    if not isinstance(named, str) or not named.strip() or len(named) > 100:
        raise RequestError(400, f"{key}: give a name of 1-100 characters", counted=False)
    return replace(who, name=named.strip())


def sees_records(who: people.Principal) -> bool:
    """May the caller see records and predictions (a reviewer or auditor), or only the blind view (a counter)?"""
    return who.has("reviewer") or who.has("auditor")
