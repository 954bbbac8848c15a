"""The audit store under hostile conditions (issue 19): a SQLite file deleted, moved or replaced while `audit run`
works; read commands given a path without a store (never created), or a folder, FIFO, device, socket or other file;
databases other than SQLite and PostgreSQL refused before any driver import; two photos of a bin never one snapshot;
and values a database can never store (NUL on PostgreSQL, numbers out of range) told apart from a database that is
unavailable."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bintally.audit import open_store
from bintally.audit.schema import Snapshot, utcnow
from bintally.audit.store import BadValue, StoreError
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.test_audit import PHOTOS, record_of, rows, rows_or_zero, write_csv

READ_COMMANDS = [
    ["list"], ["list", "--runs"], ["show", "1"], ["show", "1", "--blind"], ["assign", "1", "--to", "ann"],
    ["count", "1", "--qty", "1", "--by", "ann"], ["review", "1", "--reject", "--by", "bo"],
    ["export", "--run", "1", "--out", "{tmp}/out.csv"], ["labels", "--out", "{tmp}/labels.csv"],
]


def photos_csv(folder: Path, copies: int = 1, name: str = "bins.csv", extra: list[dict] = (), columns=("bin_id", "image", "record_qty")) -> Path:
    """The 16 sample photos (each `copies` times, as other bins) with their records, plus `extra` rows."""
    (folder / "photos").mkdir(exist_ok=True)
    rows_ = []
    for photo in PHOTOS:
        (folder / "photos" / photo.name).write_bytes(photo.read_bytes())
        rows_ += [{"bin_id": f"bin-{photo.stem}-{i}", "image": f"photos/{photo.name}", "record_qty": record_of(photo)} for i in range(copies)]
    return write_csv(folder / name, rows_ + list(extra), columns)


def subfolder(parent: Path, name: str) -> Path:
    (parent / name).mkdir()
    return parent / name


def audit_args(model, data, db, *extra) -> list[str]:
    return ["audit", "run", "--model", str(model), "--data", str(data), "--db", str(db), "--backend", "torch", "--no-progress", *extra]


# ---------------------------------------------------------------- a store that vanishes under `audit run`


def remove_sqlite(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize("how", ["deleted", "replaced", "folder renamed"])
def test_a_store_that_vanishes_while_audit_run_works_fails_in_one_line_and_never_reports_success(tmp_path, tiny_artifact, how):
    data = photos_csv(tmp_path, copies=4)  # 64 bins, one committed batch each
    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "audit.db"
    other = tmp_path / "other.db"
    open_store(str(other)).close()  # another (empty) audit store, to put in its place
    process = subprocess.Popen([sys.executable, "-m", "bintally", *audit_args(tiny_artifact.path, data, db, "--batch-size", "1")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None and rows_or_zero(db) < 2:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before its store could be taken away"
    if how == "deleted":
        remove_sqlite(db)
    elif how == "replaced":
        remove_sqlite(db)
        os.replace(other, db)
    else:
        folder.rename(tmp_path / "moved")
    stdout, stderr = process.communicate(timeout=180)
    assert_one_line_error(subprocess.CompletedProcess([], process.returncode, stdout, stderr),
                          f"the audit database {db} was deleted, moved or replaced while this command ran")
    assert "to recount" not in stdout and "scored" not in stdout
    scored = rows(tmp_path / "moved" / "audit.db", "SELECT count(*) FROM scores")[0][0] if how == "folder renamed" else None
    if how == "replaced":
        assert rows(db, "SELECT count(*) FROM audit_runs") == [(0,)]  # the store put in its place was not written to
    if scored is not None:
        assert 2 <= scored < 64  # the moved file holds the batches committed before it moved, and no more


# ---------------------------------------------------------------- read commands never create a store


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_read_command_on_a_path_without_a_store_says_so_and_creates_nothing(tmp_path, command):
    db = tmp_path / "typo.db"
    result = run_cli("audit", *[a.format(tmp=tmp_path) for a in command], "--db", db)
    assert_one_line_error(result, f"no audit database at {db}", "run `bintally audit run` first")
    assert sorted(tmp_path.iterdir()) == []


def test_the_default_store_of_a_read_command_is_not_created_either(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BINTALLY_AUDIT_DB", raising=False)
    assert_one_line_error(run_cli("audit", "list"), f"no audit database at {tmp_path / 'audit.db'}")
    assert not (tmp_path / "audit.db").exists()


def special_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Paths that are not an audit store, each with the words its refusal must hold."""
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    (tmp_path / "text.db").write_text("bin_id,image,record_qty\n" * 50)
    (tmp_path / "empty.db").write_bytes(b"")
    with sqlite3.connect(tmp_path / "foreign.db") as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")
    return {"folder": (tmp_path / "folder", "is a folder"), "fifo": (tmp_path / "fifo", "is a FIFO"),
            "device": (tmp_path / "zero", "is a character device"), "socket": (tmp_path / "sock", "is a socket"),
            "text": (tmp_path / "text.db", "not a SQLite database"), "empty": (tmp_path / "empty.db", "the file is empty"),
            "foreign": (tmp_path / "foreign.db", "holds no audit store")}


@pytest.mark.parametrize("kind", ["folder", "fifo", "device", "socket", "text", "empty", "foreign"])
def test_a_store_path_that_is_no_store_is_one_line_and_left_as_it_was(tmp_path, kind):
    path, words = special_paths(tmp_path)[kind]
    before = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    started = time.monotonic()
    result = run_cli("audit", "list", "--db", path)
    assert time.monotonic() - started < 30  # a FIFO is never opened: nothing waits for a writer
    assert_one_line_error(result, str(path.resolve()), words)  # a symbolic link is named by what it points to
    if before is not None:
        assert path.read_bytes() == before
    if kind == "foreign":
        assert rows(path, "SELECT name FROM sqlite_master") == [("notes",)]  # no audit tables added


@pytest.mark.parametrize("kind", ["folder", "fifo", "device", "text"])
def test_audit_run_refuses_a_store_path_that_is_no_sqlite_file(tmp_path, tiny_artifact, kind):
    path, words = special_paths(tmp_path)[kind]
    data = photos_csv(subfolder(tmp_path, "src"))
    result = run_cli(*audit_args(tiny_artifact.path, data, path))
    assert_one_line_error(result, str(path.resolve()), words)  # a symbolic link is named by what it points to


# ---------------------------------------------------------------- databases other than SQLite and PostgreSQL


@pytest.mark.parametrize("url, words", [
    ("mysql://u:secret@127.0.0.1/db", "the audit store runs on SQLite or PostgreSQL, not mysql"),
    ("mysql+pymysql://u@127.0.0.1/db", "the audit store runs on SQLite or PostgreSQL, not mysql"),
    ("mariadb://u@127.0.0.1/db", "the audit store runs on SQLite or PostgreSQL, not mariadb"),
    ("oracle://u@127.0.0.1/db", "the audit store runs on SQLite or PostgreSQL, not oracle"),
    ("bogus://nowhere/db", "not bogus"),
    ("postgresql+asyncpg://u@127.0.0.1/db", "its driver asyncpg is not installed"),
    ("postgresql+nosuch://u@127.0.0.1/db", "no postgresql driver named 'nosuch'"),
    ("postgresql+psycopg://u@127.0.0.1:port/db", "not a database URL"),
    ("://nothing", "not a database URL"),
])
def test_a_database_url_the_store_cannot_use_is_refused_before_any_driver_import(url, words):
    for command in (["list"], ["show", "1"]):
        line = assert_one_line_error(run_cli("audit", *command, "--db", url), "cannot open the audit database", words)
        assert "No module named" not in line and "secret" not in line


def test_a_postgresql_url_without_a_driver_uses_psycopg(postgres_url):
    bare = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    store = open_store(bare)
    try:
        assert store.dialect == "postgresql" and store.engine.dialect.driver == "psycopg"
    finally:
        store.close()


# ---------------------------------------------------------------- two photos of a bin are two snapshots


def test_unreadable_photos_of_one_bin_in_two_runs_are_two_snapshots(tmp_path, tiny_artifact):
    db = tmp_path / "audit.db"
    for i, name in enumerate(("first.jpg", "second.jpg")):  # neither exists: no bytes, no digest
        data = photos_csv(tmp_path, name=f"run{i}.csv", extra=[{"bin_id": "bin-X", "image": f"photos/{name}", "record_qty": 3}])
        result = run_cli(*audit_args(tiny_artifact.path, data, db))
        assert result.returncode == 0, result.stderr
        assert f"skipped {tmp_path / 'photos' / name}" in result.stderr
    scored = rows(db, "SELECT r.id, s.image_uri, c.problem IS NOT NULL FROM scores c JOIN snapshots s ON s.id = c.snapshot_id "
                      "JOIN audit_runs r ON r.id = c.run_id WHERE s.bin_id = 'bin-X' ORDER BY r.id")
    assert scored == [(1, str(tmp_path / "photos" / "first.jpg"), 1), (2, str(tmp_path / "photos" / "second.jpg"), 1)]


def test_the_same_photo_at_another_path_is_its_own_snapshot_and_each_run_shows_its_own_path(tmp_path, tiny_artifact):
    db = tmp_path / "audit.db"
    first, second = photos_csv(subfolder(tmp_path, "a")), photos_csv(subfolder(tmp_path, "b"))
    for data in (first, second):
        assert run_cli(*audit_args(tiny_artifact.path, data, db)).returncode == 0
    images = rows(db, "SELECT c.run_id, s.image_uri FROM scores c JOIN snapshots s ON s.id = c.snapshot_id")
    assert len(images) == 32 and len({image for _, image in images}) == 32
    assert all(image.startswith(str(tmp_path / ("a" if run == 1 else "b"))) for run, image in images)


def test_two_photos_of_one_bin_at_the_same_time_are_refused_in_one_line(tmp_path, tiny_artifact):
    db = tmp_path / "audit.db"
    columns = ("bin_id", "image", "record_qty", "captured_at")
    at = "2026-11-25T14:03:00"
    first = photos_csv(tmp_path, name="first.csv", columns=columns,
                       extra=[{"bin_id": "bin-T", "image": f"photos/{PHOTOS[0].name}", "record_qty": 2, "captured_at": at}])
    assert run_cli(*audit_args(tiny_artifact.path, first, db)).returncode == 0
    before = rows(db, "SELECT count(*) FROM snapshots")
    second = photos_csv(tmp_path, name="second.csv", columns=columns,
                        extra=[{"bin_id": "bin-T", "image": f"photos/{PHOTOS[1].name}", "record_qty": 2, "captured_at": at}])
    result = run_cli(*audit_args(tiny_artifact.path, second, db, "--batch-size", "64"))
    assert_one_line_error(result, "bin 'bin-T' captured at 2026-11-25T14:03:00", f"photos/{PHOTOS[0].name}",
                          f"photos/{PHOTOS[1].name}", "correct the source's image or captured_at")
    assert rows(db, "SELECT count(*) FROM snapshots") == before


# ---------------------------------------------------------------- a value the database can never store


def add_snapshot(store, **changes) -> None:
    row = dict(key=os.urandom(8).hex(), bin_id="bin-1", image_uri="/p.jpg", sha256="", record_qty=1, created_at=utcnow()) | changes
    with store.session() as session:
        session.add(Snapshot(**row))


@pytest.mark.parametrize("change, words", [
    ({"bin_id": "bin\x00one"}, "NUL"),
    ({"image_uri": "/photos/\x00.jpg"}, "NUL"),
    ({"record_qty": 2**40}, "out of range"),
    ({"bin_id": "b" * 300}, "too long"),
])
def test_a_value_postgresql_cannot_store_is_bad_input_not_an_unavailable_database(fresh_pg_db, change, words):
    store = open_store(fresh_pg_db)
    try:
        with pytest.raises(BadValue) as refused:
            add_snapshot(store, **change)
        assert not isinstance(refused.value, StoreError)  # the server answers 400, not 503 "retry"
        assert "cannot store a value" in str(refused.value) and words in str(refused.value) and "\n" not in str(refused.value)
        add_snapshot(store)  # the store goes on working
    finally:
        store.close()


def test_a_number_sqlite_cannot_store_is_bad_input(tmp_path):
    store = open_store(str(tmp_path / "a.db"))
    try:
        with pytest.raises(BadValue, match="cannot store a value"):
            add_snapshot(store, record_qty=10**30)
    finally:
        store.close()


def test_a_stopped_postgresql_is_unavailable_not_bad_input():
    from tests.postgres import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed")
    server = PostgresServer(bin_dir).start()
    try:
        store = open_store(server.url(server.create_database("stopped")))
        add_snapshot(store)
        server.stop()
        with pytest.raises(StoreError) as failed:
            add_snapshot(store)
        assert not isinstance(failed.value, BadValue) and "failed" in str(failed.value)
        store.close()
    finally:
        server.stop()



def test_a_nul_the_server_passes_to_postgresql_is_a_400_and_the_task_is_unchanged(fresh_pg_db, tiny_artifact, tmp_path, serve):
    import httpx

    from bintally.serving.config import ServeConfig
    from tests.servers import API_KEY, AUTH

    data = photos_csv(tmp_path)
    assert run_cli(*audit_args(tiny_artifact.path, data, fresh_pg_db, "--budget", "0.5")).returncode == 0
    server = serve(ServeConfig(model=str(tiny_artifact.path), backend="torch", threads=1, api_key=API_KEY, audit_db=fresh_pg_db,
                         audit_auth="open").validate())
    for body in ({"qty": 1, "by": "ann\u0000"}, {"qty": 1, "by": "ann", "comment": "shelf \u0000 two"}):
        answer = httpx.post(f"{server.url}/v1/tasks/1/counts", json=body, headers=AUTH, timeout=30)
        assert answer.status_code == 400, answer.text
        assert "retry" not in answer.json()["error"]  # bad input (refused by the database or before it), never "unavailable"
    assert query_one(fresh_pg_db, "SELECT status, (SELECT count(*) FROM count_observations) FROM tasks WHERE id = 1") == ("requested", 0)


def query_one(url: str, sql: str) -> tuple:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return tuple(connection.exec_driver_sql(sql).one())
    finally:
        engine.dispose()
