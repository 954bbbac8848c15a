"""A throwaway PostgreSQL server for the tests: initdb into a fresh temporary folder, start on a free port of
127.0.0.1 (and a unix socket in that folder), fsync off, stopped with `pg_ctl stop -m immediate` at the end.

PostgreSQL refuses to run as root, and CI runs as root on a fresh machine: as root the server runs as the
unprivileged system user `bintally-pg` (created with useradd when missing; `nobody` where that fails), through
`runuser -u USER --` (or `setpriv`). Anyone else runs it as themselves. Without the binaries (`make test`
installs them: the Makefile's `postgres` target) the PostgreSQL tests skip, except under CI=true, where that fails.

Fixtures (imported by conftest.py):

    postgres_server  session: the running server (`PostgresServer`)
    postgres_url     session: a SQLAlchemy URL of one database created for the session
    fresh_pg_db      function: a SQLAlchemy URL of a new, empty database for one test
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import free_port, required_or_skip

BIN_ENV = "BINTALLY_PG_BIN"  # a folder holding initdb and pg_ctl, instead of the newest /usr/lib/postgresql/*/bin
BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVICE_USER = "bintally-pg"
SUPERUSER = "bintally"  # the database role (trust authentication: no password on a throwaway server)
START_TIMEOUT_S = 30


def find_bin_dir() -> Path | None:
    """The folder of initdb and pg_ctl: $BINTALLY_PG_BIN, else the newest /usr/lib/postgresql/*/bin, else PATH."""
    candidates = [os.environ[BIN_ENV]] if os.environ.get(BIN_ENV) else []
    candidates += sorted(glob.glob(BIN_GLOB), key=lambda p: [int(x) for x in re.findall(r"\d+", p)] or [0], reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    for folder in candidates:
        if all(os.access(Path(folder) / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def service_user() -> str:
    """An unprivileged user to run the server as root: bintally-pg (created when missing), else nobody."""
    for _ in range(2):
        try:
            pwd.getpwnam(SERVICE_USER)
            return SERVICE_USER
        except KeyError:
            pass
        if shutil.which("useradd") is None:
            break
        # a concurrent session may create it at the same moment: the loop looks again whatever useradd says
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", SERVICE_USER], capture_output=True)
    pwd.getpwnam("nobody")
    return "nobody"


def as_user(user: str | None, command: list[str]) -> list[str]:
    """`command` run as `user` (None: as ourselves)."""
    if user is None:
        return command
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *command]
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", *command]


class PostgresServer:
    """One throwaway server: `start()`, `url(db)`, `create_database()`, `stop()`."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.user = service_user() if os.geteuid() == 0 else None
        self.root: Path | None = None
        self.port: int | None = None
        self.names = itertools.count(1)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        done = subprocess.run(as_user(self.user, [str(self.bin_dir / command[0]), *command[1:]]), cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:] if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}\n{log}")
        return done

    def start(self) -> "PostgresServer":
        # not under pytest's tmp_path: its 0700 parents would keep the unprivileged user out (and a long path would not
        # fit a unix socket's name): $TMPDIR when every folder above is open to others and the path is short, else /tmp
        parent = Path(tempfile.gettempdir()).resolve()
        if self.user is not None and not all(p.stat().st_mode & 0o001 for p in [parent, *parent.parents]) or len(str(parent)) > 60:
            parent = Path("/tmp")
        self.root = Path(tempfile.mkdtemp(prefix="bintally-pg-", dir=parent))
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        atexit.register(self.stop)
        self.run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
        for attempt in range(3):  # another process may take the free port before the server binds it
            self.port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off "
                       "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB")
            try:
                self.run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", str(START_TIMEOUT_S),
                         "-o", options, "start", timeout=START_TIMEOUT_S + 10)
                return self
            except RuntimeError:
                if attempt == 2:
                    raise
                time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        root, self.root = self.root, None
        if (root / "data" / "postmaster.pid").exists():
            subprocess.run(as_user(self.user, [str(self.bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop"]),
                           cwd=root, capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def admin(self):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True)

    def create_database(self, prefix: str = "test") -> str:
        """A new, empty database; its name."""
        from psycopg import sql

        name = f"{re.sub(r'[^a-z0-9_]', '_', prefix.lower())[:40]}_{os.getpid()}_{next(self.names)}"
        with self.admin() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self.admin() as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres_server():
    """The session's PostgreSQL server; the tests skip without the binaries (they fail under CI=true)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = f"PostgreSQL is not installed (no initdb/pg_ctl in {BIN_GLOB} or PATH): `make postgres` installs it"
        required_or_skip(message)
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """A SQLAlchemy URL of a database created for the session (shared by the tests that use it)."""
    return postgres_server.url(postgres_server.create_database("session"))


@pytest.fixture
def fresh_pg_db(postgres_server, request) -> str:
    """A SQLAlchemy URL of a new, empty database: no test sees another's data."""
    name = postgres_server.create_database(request.node.name)
    yield postgres_server.url(name)
    try:
        postgres_server.drop_database(name)
    except Exception:  # the server goes away at the session's end anyway
        pass
