"""People and permissions in the audit store: users with roles, tokens (only their scrypt hash is stored), who is acting
(`Principal`), what each role may do (`require`), separation of duties, and the append-only event log.

Roles:
    counter   the blind task view of assigned or open tasks; submits counts
    reviewer  records, predictions and counts; approves or rejects
    auditor   creates runs, reads runs' metrics, exports and labels
    admin     manages users, tokens and the store's settings

A token is `btk_<lookup>_<secret>`: `lookup` finds its row, the secret is checked against its scrypt hash in constant
time. It is shown once, by `add_user` or `rotate_token`, and never stored, logged or exported.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import re
import secrets
import socket
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select

from bintally.audit.errors import Conflict, NotFound
from bintally.audit.schema import AuditEvent, DashboardSession, StoreSetting, Token, User, utcnow
from bintally.audit.store import Store
from bintally.errors import ConfigError
from bintally.text import check_text, identifier_problem

ROLES = ("counter", "reviewer", "auditor", "admin")
ALL_ROLES = frozenset(ROLES)
TOKEN_ENV = "BINTALLY_TOKEN"
TOKEN_PREFIX = "btk_"
TOKEN_PATTERN = re.compile(r"btk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}  # ~16 MB and tens of ms per check: a stolen hash is slow to attack
USER_NAME = re.compile(r"[^\W_][\w.@-]{0,99}")  # letters of any script (José, 李), digits, . _ @ -
SESSION_HOURS = 12
SESSION_COOKIE = "bintally_session"  # HttpOnly, SameSite=Strict, Path=/, Secure behind https
CSRF_HEADER = "X-CSRF-Token"  # the session's CSRF token, required on the dashboard's state-changing requests

# separation of duties, per store (`set_setting`); both hold by default
SEPARATE_APPROVAL = "separate_count_and_approval"  # no one approves a task they counted
SEPARATE_RECOUNT = "separate_count_and_recount"  # a recount goes to someone other than the first counter
SETTINGS = {SEPARATE_APPROVAL: "true", SEPARATE_RECOUNT: "true"}


class Unauthorized(ConfigError):
    """No identity, or one that does not hold (unknown, malformed, revoked or rotated token, disabled user): HTTP 401."""


class Forbidden(ConfigError):
    """An identity without the role, or a step separation of duties refuses: HTTP 403, exit 2."""


@dataclass(frozen=True)
class Principal:
    """Who is acting: a user (from a token, or a trusted proxy's header) or the local owner of a store file."""
    name: str
    roles: frozenset[str]
    kind: str  # token | local | proxy
    origin: str  # where from, for the event log: "http 127.0.0.1:5342", "cli pid 12 on host (os user ann)"
    user_id: int | None = None
    token_id: int | None = None

    def has(self, role: str) -> bool:
        return role in self.roles


def cli_origin() -> str:
    return f"cli pid {os.getpid()} on {socket.gethostname()} (os user {os_user()})"


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def local_owner(name: str | None = None) -> Principal:
    """The owner of a store file, using the CLI without a token: every role, recorded as such (kind "local").
    `name` (a CLI `--by`) signs the step; the event log keeps the OS user beside it."""
    return Principal(check_user_name(name) if name else os_user(), ALL_ROLES, "local", cli_origin())


def check_user_name(name: str) -> str:
    name = check_text(name.strip(), "user name")
    problem = identifier_problem(name)
    if problem:
        raise ConfigError(f"user name {name!r} {problem}")
    if not USER_NAME.fullmatch(name):
        raise ConfigError(f"user name {name!r}: use 1-100 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    return name


def check_roles(roles) -> str:
    """Roles as stored: sorted, comma-separated; ConfigError for none or an unknown one."""
    roles = {r.strip() for r in roles}
    if not roles:
        raise ConfigError(f"give at least one role ({', '.join(ROLES)})")
    unknown = sorted(roles - ALL_ROLES)
    if unknown:
        raise ConfigError(f"unknown role {unknown[0]!r}: the roles are {', '.join(ROLES)}")
    return ",".join(r for r in ROLES if r in roles)


def require(principal: Principal, *roles: str) -> Principal:
    """`principal` if it holds one of `roles`; Forbidden naming them otherwise."""
    if not any(principal.has(r) for r in roles):
        raise Forbidden(f"{principal.name} may not do this: it needs the role {' or '.join(roles)} "
                        f"(holds {', '.join(sorted(principal.roles)) or 'none'})")
    return principal


# ---------------------------------------------------------------- tokens


def hash_secret(secret: str, salt: str) -> str:
    return hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), **SCRYPT).hex()


def new_token_row(user_id: int) -> tuple[Token, str]:
    lookup, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_hex(16)
    return Token(user_id=user_id, lookup=lookup, salt=salt, digest=hash_secret(secret, salt)), f"{TOKEN_PREFIX}{lookup}_{secret}"


_verified: dict[str, int] = {}  # sha256 of a token checked once -> its row id: scrypt runs once per token per process
_DUMMY_SALT = secrets.token_hex(16)


def authenticate(store: Store, token: str | None, origin: str) -> Principal:
    """The user a token belongs to; Unauthorized (one line, never echoing the token) when it does not hold.

    Revocation and disabling are read from the store on every call, so they take effect at once."""
    if not token:
        raise Unauthorized("no token: send 'Authorization: Bearer <token>' (HTTP) or set BINTALLY_TOKEN (CLI)")
    match = TOKEN_PATTERN.fullmatch(token.strip())
    with store.session() as session:
        row = session.execute(select(Token, User).join(User, User.id == Token.user_id)
                              .where(Token.lookup == (match.group(1) if match else ""))).first()
        if not secret_matches(token.strip(), match, row.Token if row else None):
            raise Unauthorized("the token is not valid (unknown, mistyped, or replaced by `bintally audit token rotate`)")
        tok, user = row.Token, row.User
        if tok.revoked_at is not None:
            raise Unauthorized("the token was replaced (`bintally audit token rotate`): use the new one")
        if user.disabled_at is not None:
            raise Unauthorized(f"user {user.name} is disabled")
        return Principal(user.name, frozenset(user.roles.split(",")), "token", origin, user.id, tok.id)


def secret_matches(token: str, match, row: Token | None) -> bool:
    """Constant time whatever fails: an unknown lookup still costs one scrypt."""
    fingerprint = hashlib.sha256(token.encode()).hexdigest()
    if row is not None and _verified.get(fingerprint) == row.id:
        return True
    secret = match.group(2) if match else "x"
    salt, digest = (row.salt, row.digest) if row is not None else (_DUMMY_SALT, "0" * 64)
    ok = hmac.compare_digest(hash_secret(secret, salt), digest) and row is not None and match is not None
    if ok:
        _verified[fingerprint] = row.id
    return ok


# ---------------------------------------------------------------- users (admin)


def has_users(store: Store) -> bool:
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(User)) > 0


def get_user(session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"no user {name!r}")
    return user


def add_user(store: Store, name: str, roles, by: Principal) -> str:
    """A new user with `roles`; their first token (shown once: it is not stored)."""
    require(by, "admin")
    name, stored = check_user_name(name), check_roles(roles)
    with store.session() as session:
        if session.scalar(select(User).where(User.name == name)) is not None:
            raise Conflict(f"user {name!r} exists: give another name, or `bintally audit token rotate {name}` for a new token")
        user = User(name=name, roles=stored, created_by=by.name)
        session.add(user)
        session.flush()
        token_row, token = new_token_row(user.id)
        session.add(token_row)
        record_event(session, by, "user.add", f"user {name}", {"roles": stored})
    return token


def list_users(store: Store) -> list[dict]:
    with store.session() as session:
        users = session.scalars(select(User).order_by(User.name)).all()
        return [{"name": u.name, "roles": u.roles.split(","), "created_at": u.created_at.isoformat(),
                 "created_by": u.created_by, "disabled": u.disabled_at is not None} for u in users]


def disable_user(store: Store, name: str, by: Principal) -> None:
    """The user's tokens and sessions stop working at once."""
    require(by, "admin")
    with store.session() as session:
        user = get_user(session, name)
        if user.disabled_at is None:
            user.disabled_at = utcnow()
            end_sessions(session, user_id=user.id)
            record_event(session, by, "user.disable", f"user {name}")


def rotate_token(store: Store, name: str, by: Principal) -> str:
    """A new token for `name` (admin, or the user themselves); every older token and its sessions stop working at once."""
    if by.name != name:
        require(by, "admin")
    with store.session() as session:
        user = get_user(session, name)
        if user.disabled_at is not None:
            raise Forbidden(f"user {name} is disabled: a disabled user gets no token")
        now = utcnow()
        for old in session.scalars(select(Token).where(Token.user_id == user.id, Token.revoked_at.is_(None))):
            old.revoked_at = now
        end_sessions(session, user_id=user.id)
        token_row, token = new_token_row(user.id)
        session.add(token_row)
        record_event(session, by, "token.rotate", f"user {name}")
    return token


# ---------------------------------------------------------------- dashboard sessions


def open_session(store: Store, principal: Principal) -> tuple[str, str]:
    """(cookie secret, CSRF token) of a new dashboard session for a token-authenticated principal."""
    secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with store.session() as session:
        session.add(DashboardSession(digest=hashlib.sha256(secret.encode()).hexdigest(), user_id=principal.user_id,
                                     token_id=principal.token_id, csrf=csrf,
                                     expires_at=utcnow() + timedelta(hours=SESSION_HOURS)))
        record_event(session, principal, "session.open", f"user {principal.name}")
    return secret, csrf


def session_principal(store: Store, secret: str | None, origin: str) -> tuple[Principal, str]:
    """(the principal, the session's CSRF token) of a live dashboard session; Unauthorized otherwise."""
    if not secret:
        raise Unauthorized("not logged in")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    with store.session() as session:
        row = session.execute(select(DashboardSession, User, Token).join(User, User.id == DashboardSession.user_id)
                              .join(Token, Token.id == DashboardSession.token_id)
                              .where(DashboardSession.digest == digest)).first()
        if row is None or row.DashboardSession.ended_at is not None or row.DashboardSession.expires_at < utcnow():
            raise Unauthorized("the session ended: log in again")
        if row.User.disabled_at is not None or row.Token.revoked_at is not None:
            raise Unauthorized("the session ended (user disabled or token rotated): log in again")
        user = row.User
        return (Principal(user.name, frozenset(user.roles.split(",")), "token", origin, user.id, row.Token.id),
                row.DashboardSession.csrf)


def close_session(store: Store, secret: str, principal: Principal) -> None:
    with store.session() as session:
        end_sessions(session, digest=hashlib.sha256(secret.encode()).hexdigest())
        record_event(session, principal, "session.close", f"user {principal.name}")


def end_sessions(session, user_id: int | None = None, digest: str | None = None) -> None:
    query = select(DashboardSession).where(DashboardSession.ended_at.is_(None))
    query = query.where(DashboardSession.user_id == user_id) if user_id is not None else query.where(DashboardSession.digest == digest)
    for row in session.scalars(query):
        row.ended_at = utcnow()


# ---------------------------------------------------------------- settings and the event log


def setting(session, key: str) -> bool:
    value = session.scalar(select(StoreSetting.value).where(StoreSetting.key == key))
    return (SETTINGS[key] if value is None else value) == "true"


def set_setting(store: Store, key: str, value: bool, by: Principal) -> None:
    require(by, "admin")
    if key not in SETTINGS:
        raise ConfigError(f"unknown store setting {key!r}: the settings are {', '.join(SETTINGS)}")
    with store.session() as session:
        row = session.get(StoreSetting, key)
        text = "true" if value else "false"
        if row is None:
            session.add(StoreSetting(key=key, value=text))
        else:
            row.value = text
        record_event(session, by, "setting.set", key, {"value": value})


def record_event(session, actor: Principal, action: str, target: str | None = None, detail: dict | None = None) -> None:
    """One row in the append-only log, in the caller's transaction (so it is written exactly when the change is)."""
    session.add(AuditEvent(actor=actor.name, actor_kind=actor.kind, origin=actor.origin[:200], action=action,
                           target=target, detail=detail))


def events(store: Store, limit: int = 100) -> list[dict]:
    with store.session() as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)).all()
        return [{"id": e.id, "at": e.at.isoformat(), "actor": e.actor, "actor_kind": e.actor_kind, "origin": e.origin,
                 "action": e.action, "target": e.target, "detail": e.detail} for e in rows]
