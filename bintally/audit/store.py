"""Opening the audit store: a SQLite file (the default) or a PostgreSQL URL, its schema brought up to date by Alembic.

`open_store(url)` refuses, in one line, a URL that cannot be opened and a database whose schema was written
by a newer bintally; both the CLI and the server call it on start, so the schema is always current.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bintally.errors import ConfigError

DB_ENV = "BINTALLY_AUDIT_DB"
DEFAULT_DB = "audit.db"
MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30
SUPPORTED_DIALECTS = ("sqlite", "postgresql")
UPGRADE_LOCK = 0x62696E74  # a PostgreSQL advisory lock id: one process at a time upgrades the schema


def database_url(db: str | None = None) -> str:
    """A SQLAlchemy URL from --db: a URL as given, a plain path as a SQLite file; default $BINTALLY_AUDIT_DB or ./audit.db."""
    db = db or os.environ.get(DB_ENV) or DEFAULT_DB
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def shown(url: str) -> str:
    """The URL for messages, password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def one_line(error: BaseException) -> str:
    text_ = " ".join(str(getattr(error, "orig", None) or error).split())
    return text_.split(" (Background on this error")[0][:300]


class StoreError(ConfigError):
    """The database failed under a working command (HTTP 503: it may be busy or unreachable for a while)."""


class Store:
    """An engine and a session factory over one audit database (schema at head)."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on an exception. A database that fails under it
        (unreachable, locked past the timeout, read-only, tables missing) is a StoreError naming it, in one line."""
        try:
            with self.sessions.begin() as session:
                yield session
        except IntegrityError:
            raise  # a constraint refused a write: the caller knows what that means (a concurrent writer, a duplicate)
        except SQLAlchemyError as e:
            raise StoreError(f"the audit database {shown(self.url)} failed: {one_line(e)}") from None

    def close(self) -> None:
        self.engine.dispose()


def insert_ignoring_duplicates(store: "Store", table):
    """INSERT INTO table ... ON CONFLICT DO NOTHING, as PostgreSQL and SQLite both speak it (call .values() on it)."""
    if store.dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:" and not Path(database).parent.is_dir():
                raise ConfigError(f"cannot open the audit database {shown(url)}: the folder {Path(database).parent} does not exist")
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "isolation_level": None})
            serialise_sqlite_writers(engine)
            return engine
        engine = create_engine(url, pool_pre_ping=True)
    except ConfigError:
        raise
    except (ArgumentError, SQLAlchemyError, ImportError, ValueError) as e:
        raise ConfigError(f"cannot open the audit database {shown(url)}: {one_line(e)}") from None
    if engine.dialect.name not in SUPPORTED_DIALECTS:  # the upserts are INSERT ... ON CONFLICT DO NOTHING
        engine.dispose()
        raise ConfigError(f"cannot open the audit database {shown(url)}: the audit store runs on SQLite or PostgreSQL, "
                          f"not {engine.dialect.name}")
    return engine


def serialise_sqlite_writers(engine: Engine) -> None:
    """SQLite: foreign keys on, WAL (readers do not wait for a writer), and every transaction BEGIN IMMEDIATE, so two
    writers queue on the lock instead of one failing with "database is locked" when both upgrade a read to a write."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


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


def upgrade_schema(store: Store) -> str:
    """Bring the schema to head (creating it in an empty database); refuse a schema newer than this bintally knows."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines describe each migration step (and, on import, each plugin)
    from alembic import command

    known, head = known_revisions()
    with store.engine.begin() as connection:
        if store.dialect == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": UPGRADE_LOCK})
        current = current_revision(connection)
        if current is not None and current not in known:
            raise ConfigError(f"the audit database {shown(store.url)} has schema revision {current}, written by a newer "
                              f"bintally (this one knows up to {head}): upgrade bintally")
        if current != head:
            command.upgrade(alembic_config(connection), "head")
    return head


def open_store(db: str | None = None) -> Store:
    """The audit store at --db (see `database_url`), schema upgraded; ConfigError in one line if it cannot be opened."""
    url = database_url(db)
    store = Store(url)
    try:
        upgrade_schema(store)
    except ConfigError:
        store.close()
        raise
    except (SQLAlchemyError, OSError) as e:
        store.close()
        raise ConfigError(f"cannot open the audit database {shown(url)}: {one_line(e)}") from None
    return store
