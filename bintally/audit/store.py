"""Opening the audit store: a SQLite file (the default) or a PostgreSQL URL, its schema brought up to date by Alembic.

`open_store(url, create=...)` refuses, in one line, a URL that cannot be opened (a database other than SQLite or
PostgreSQL, before any driver is imported; a SQLite path that is a folder, a FIFO, a device or not SQLite) and a
database whose schema was written by a newer bintally; both the CLI and the server call it on start, so the schema
is always current. Only commands that write runs create a store (`create=True`); the others refuse a path or a
database that holds none.

A SQLite store remembers the file it opened (device and inode): a transaction that would commit after that file
was deleted, moved or replaced fails instead (`StoreGone`), so no command reports work that went into an
unlinked file. The database's own refusals are told apart: `StoreError` when it is unavailable (HTTP 503, retry)
and `BadValue` for a value it can never store (a NUL character on PostgreSQL, a number out of range: HTTP 400).
"""

from __future__ import annotations

import logging
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import DataError as SqlDataError
from sqlalchemy.orm import Session, sessionmaker

from bintally.errors import ConfigError
from bintally.io import kind_of

DB_ENV = "BINTALLY_AUDIT_DB"
DEFAULT_DB = "audit.db"
MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30
SUPPORTED_DIALECTS = ("sqlite", "postgresql")
SQLITE_HEADER = b"SQLite format 3\x00"
FIRST_RUN = "run `bintally audit run` first"
UPGRADE_LOCK = 0x62696E74  # a PostgreSQL advisory lock id: one process at a time upgrades the schema


def database_url(db: str | Path | None = None) -> str:
    """A SQLAlchemy URL from --db: a URL as given, a plain path as a SQLite file; default $BINTALLY_AUDIT_DB or ./audit.db."""
    db = str(db or os.environ.get(DB_ENV) or DEFAULT_DB)
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def shown(url: str) -> str:
    """The URL for messages, password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url


def one_line(error: BaseException) -> str:
    text_ = " ".join(str(getattr(error, "orig", None) or error).split())
    return text_.split(" (Background on this error")[0][:300]


class StoreError(ConfigError):
    """The database failed under a working command (HTTP 503: it may be busy or unreachable for a while)."""


class StoreGone(StoreError):
    """The SQLite file the store opened was deleted, moved or replaced while the command ran."""


class BadValue(ConfigError):
    """A value the database can never store (HTTP 400, exit 2): retrying cannot help."""


class Store:
    """An engine and a session factory over one audit database (schema at head)."""

    def __init__(self, url: str, create: bool = True):
        self.url = url
        self.file = sqlite_file(url)
        if self.file is not None:
            check_sqlite_file(self.file, url, create)
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the SQLite file once opened

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def remember_file(self) -> None:
        if self.file is not None:
            self.identity = file_identity(self.file)

    def check_same_file(self) -> None:
        """StoreGone when the SQLite path no longer names the file this store opened."""
        if self.identity is not None and file_identity(self.file) != self.identity:
            raise StoreGone(f"the audit database {self.file} was deleted, moved or replaced while this command ran: "
                            f"its work is not in {self.file} (nothing more was written); run the command again")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends (if the SQLite file is still the one opened), rolled back on an
        exception. A database that fails under it (unreachable, locked past the timeout, read-only, tables missing) is
        a StoreError naming it, a value it cannot store a BadValue, each in one line."""
        try:
            with self.sessions.begin() as session:
                yield session
                session.flush()
                self.check_same_file()
        except IntegrityError:
            raise  # a constraint refused a write: the caller knows what that means (a concurrent writer, a duplicate)
        except (SqlDataError, OverflowError) as e:
            raise BadValue(f"the audit database {shown(self.url)} cannot store a value: {one_line(e)}") from None
        except SQLAlchemyError as e:
            raise StoreError(f"the audit database {shown(self.url)} failed: {one_line(e)}") from None

    def close(self) -> None:
        self.engine.dispose()


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database, or SQLite in memory)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_sqlite_file(path: Path, url: str, create: bool) -> None:
    """One line for a SQLite path that cannot hold an audit store: missing (unless creating), a folder, a FIFO, a
    device, a socket, or a file that is not SQLite; never opened, so nothing hangs and nothing is created."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not create:
            raise ConfigError(f"no audit database at {path} ({FIRST_RUN})") from None
        if not path.parent.is_dir():
            raise ConfigError(f"cannot open the audit database {shown(url)}: the folder {path.parent} does not exist") from None
        return
    except OSError as e:
        raise ConfigError(f"cannot open the audit database {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"cannot open the audit database {path}: it is a folder (give the path of a SQLite file)")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"cannot open the audit database {path}: it is {kind_of(st.st_mode)}, not a SQLite file")
    if st.st_size == 0 and not create:
        raise ConfigError(f"no audit database at {path}: the file is empty ({FIRST_RUN})")
    if st.st_size and first_bytes(path, len(SQLITE_HEADER)) != SQLITE_HEADER:
        raise ConfigError(f"cannot open the audit database {path}: the file is not a SQLite database")


def first_bytes(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise ConfigError(f"cannot open the audit database {path}: {e.strerror or e}") from None


def insert_ignoring_duplicates(store: "Store", table):
    """INSERT INTO table ... ON CONFLICT DO NOTHING, as PostgreSQL and SQLite both speak it (call .values() on it)."""
    if store.dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def make_engine(url: str) -> Engine:
    """An engine for a SQLite or PostgreSQL URL; any other database, or a driver that is not installed, is refused in
    one line before SQLAlchemy imports anything for it."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise ConfigError(f"cannot open the audit database {shown(url)}: not a database URL ({one_line(e)})") from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_DIALECTS:  # the upserts are INSERT ... ON CONFLICT DO NOTHING
        raise ConfigError(f"cannot open the audit database {shown(url)}: the audit store runs on SQLite or PostgreSQL, not {backend}")
    check_driver(parsed, url)
    try:
        if backend == "sqlite":
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "isolation_level": None})
            serialise_sqlite_writers(engine)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, SQLAlchemyError, ImportError, ValueError, TypeError) as e:
        raise ConfigError(f"cannot open the audit database {shown(url)}: {one_line(e)}") from None


def check_driver(parsed, url: str) -> None:
    try:
        parsed.get_dialect().import_dbapi()
    except ArgumentError:
        raise ConfigError(f"cannot open the audit database {shown(url)}: SQLAlchemy has no {parsed.get_backend_name()} "
                          f"driver named {parsed.get_driver_name()!r} (write postgresql+psycopg://...)") from None
    except ImportError:
        raise ConfigError(f"cannot open the audit database {shown(url)}: its driver {parsed.get_driver_name()} is not "
                          f"installed (bintally installs psycopg: write postgresql+psycopg://...)") from None


def serialise_sqlite_writers(engine: Engine) -> None:
    """SQLite: foreign keys on and every transaction BEGIN IMMEDIATE, so two writers queue on the lock instead of one
    failing with "database is locked" when both upgrade a read to a write (WAL: `use_wal`, once the file is a store)."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def use_wal(store: Store) -> None:
    """SQLite: WAL, so readers do not wait for a writer (a setting of the file: set only once it holds a store)."""
    if store.dialect == "sqlite":
        connection = store.engine.raw_connection()  # outside the BEGIN IMMEDIATE that every SQLAlchemy transaction opens
        try:
            connection.cursor().execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()


def alembic_config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def known_revisions() -> tuple[set[str], str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    return {s.revision for s in scripts.walk_revisions()}, scripts.get_current_head()


def current_revision(connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade_schema(store: Store, create: bool = True) -> str:
    """Bring the schema to head (creating it in an empty database when `create`); refuse a schema newer than this
    bintally knows, and without `create` a database that holds no audit store."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines describe each migration step (and, on import, each plugin)
    from alembic import command

    known, head = known_revisions()
    with store.engine.begin() as connection:
        if store.dialect == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": UPGRADE_LOCK})
        current = current_revision(connection)
        if current is None and not create:
            raise ConfigError(f"the database {shown(store.url)} holds no audit store ({FIRST_RUN})")
        if current is not None and current not in known:
            raise ConfigError(f"the audit database {shown(store.url)} has schema revision {current}, written by a newer "
                              f"bintally (this one knows up to {head}): upgrade bintally")
        if current != head:
            command.upgrade(alembic_config(connection), "head")
    return head


def open_store(db: str | Path | None = None, create: bool = True) -> Store:
    """The audit store at --db (see `database_url`), schema upgraded; ConfigError in one line if it cannot be opened.

    `create=True` (what writes runs: `audit run`, `serve --audit-db`) makes a new SQLite file or the schema in an
    empty database; `create=False` (every other command) refuses a path or a database without a store instead, so a
    typo never leaves an empty store behind."""
    url = database_url(db)
    store = Store(url, create)
    try:
        upgrade_schema(store, create)
        use_wal(store)
        store.remember_file()
    except ConfigError:
        store.close()
        raise
    except (SQLAlchemyError, OSError) as e:
        store.close()
        raise ConfigError(f"cannot open the audit database {shown(url)}: {one_line(e)}") from None
    return store
