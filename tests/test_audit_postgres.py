"""The audit store on a real PostgreSQL server: schema creation and refusal, counts and reviews racing for one task,
and a run scored by two torchrun shards into one database (with a shard that died, and the same command again)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from bintally.audit import AuditConfig, Conflict, NotFound, audit_run, counter_view, get_run_summary, open_store, review, submit_count, task_detail
from bintally.audit import run as run_module
from bintally.audit import workflow as workflow_module
from bintally.audit.queries import snapshot_photo
from bintally.audit.store import known_revisions
from bintally.errors import ConfigError
from bintally.paths import SAMPLE_DIR
from tests.conftest import copy_bucket
from tests.lined import query
from tests.people_helpers import person

TABLES = {"snapshots", "photos", "audit_runs", "run_shards", "scores", "tasks", "count_observations", "resolutions"}
PHOTOS = 16
BUDGET, CONTROL = 0.2, 0.1  # of 16 bins: ceil(3.2) = 4 by score and ceil(1.6) = 2 at random
BIN = Path(sys.executable).parent
BACKEND = "onnx"  # the default: exported once per session into the cache, then each torchrun process starts in seconds (torch: ~4x slower)


def execute(url: str, sql: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(sql)
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def dump(url: str) -> dict:
    """Every row the audit writes, for "nothing changed" comparisons."""
    return {t: query(url, f"SELECT * FROM {t} ORDER BY 1, 2") for t in ("audit_runs", "run_shards", "scores", "snapshots", "tasks")}


@pytest.fixture(scope="module")
def bucket(tmp_path_factory) -> Path:
    """16 real sample photos in the bucket layout."""
    ids = sorted(p.stem for p in (SAMPLE_DIR / "bin-images").glob("*.jpg"))[:PHOTOS]
    return copy_bucket(SAMPLE_DIR, tmp_path_factory.mktemp("audit") / "bucket", ids)


@pytest.fixture(scope="module")
def counter(tiny_artifact):
    from bintally.inference import Counter

    return Counter.load(tiny_artifact.path, BACKEND)


def config(tiny_artifact, bucket, url, **changes) -> AuditConfig:
    settings = dict(model=str(tiny_artifact.path), data=str(bucket), db=url, budget=BUDGET, control=CONTROL, backend=BACKEND, progress=False)
    return AuditConfig(**(settings | changes))


# ---------------------------------------------------------------- schema


def test_the_schema_is_created_on_an_empty_database_and_a_second_open_changes_nothing(fresh_pg_db):
    _, head = known_revisions()
    store = open_store(fresh_pg_db)
    store.close()
    assert TABLES <= tables(fresh_pg_db)
    assert query(fresh_pg_db, "SELECT version_num FROM alembic_version") == [(head,)]
    oids = "SELECT relname, oid FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY 1"
    before = query(fresh_pg_db, oids)
    execute(fresh_pg_db, "INSERT INTO snapshots (key, bin_id, image_uri, sha256, record_qty, created_at) VALUES ('k', 'b', 'i', 's', 1, now())")

    open_store(fresh_pg_db).close()
    assert query(fresh_pg_db, oids) == before  # no table dropped and created again
    assert query(fresh_pg_db, "SELECT version_num FROM alembic_version") == [(head,)]
    assert query(fresh_pg_db, "SELECT bin_id FROM snapshots") == [("b",)]


def test_starters_opening_an_empty_database_at_once_create_the_schema_once(fresh_pg_db):
    barrier, errors = threading.Barrier(4), []

    def start():
        try:
            barrier.wait(timeout=30)
            open_store(fresh_pg_db).close()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert query(fresh_pg_db, "SELECT count(*) FROM alembic_version") == [(1,)]


def test_a_database_of_a_newer_bintally_is_refused_in_one_line_and_left_alone(fresh_pg_db):
    execute(fresh_pg_db, "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY); INSERT INTO alembic_version VALUES ('9999_future')")

    with pytest.raises(ConfigError) as refused:
        open_store(fresh_pg_db)
    message = str(refused.value)
    assert "\n" not in message and "9999_future" in message and "newer bintally" in message
    assert "bintally@127.0.0.1" in message and "upgrade bintally" in message
    assert tables(fresh_pg_db) == {"alembic_version"}
    assert query(fresh_pg_db, "SELECT version_num FROM alembic_version") == [("9999_future",)]

    cli = subprocess.run([str(BIN / "bintally"), "audit", "list", "--runs", "--db", fresh_pg_db], capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode != 0 and "9999_future" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1 and "Traceback" not in cli.stderr
    assert tables(fresh_pg_db) == {"alembic_version"}


# ---------------------------------------------------------------- counts and reviews racing


@pytest.fixture(scope="module")
def worklist(postgres_url, tiny_artifact, bucket, counter) -> tuple[str, list[int]]:
    """An open run on the session database whose 16 tasks are all waiting for a count: (url, task ids)."""
    result = audit_run(config(tiny_artifact, bucket, postgres_url, budget=1.0, control=0.0, name="races", lines="ignore"), counter=counter)
    assert result.status == "open" and result.tasks == PHOTOS
    return postgres_url, [r[0] for r in query(postgres_url, "SELECT id FROM tasks WHERE run_id = :run ORDER BY id", run=result.run_id)]


@contextmanager
def opened(url: str):
    store = open_store(url)
    try:
        yield store
    finally:
        store.close()


def record_of(url: str, task_id: int) -> int:
    return query(url, "SELECT s.record_qty FROM tasks t JOIN snapshots s ON s.id = t.snapshot_id WHERE t.id = :t", t=task_id)[0][0]


def race(url: str, action, both_read_first: bool, monkeypatch) -> list:
    """Run action(store, who) in two threads released together (and, with both_read_first, only after both have read
    the task: every writer then works from the same state); each thread's result or exception."""
    start, read = threading.Barrier(2), threading.Barrier(2)
    if both_read_first:
        original = workflow_module.get_task

        def get_task_then_wait(session, task_id):
            task = original(session, task_id)
            read.wait(timeout=30)
            return task

        monkeypatch.setattr(workflow_module, "get_task", get_task_then_wait)
    stores = [open_store(url) for _ in range(2)]  # two engines: as two server processes would
    results = [None, None]

    def go(i):
        try:
            start.wait(timeout=30)
            results[i] = action(stores[i], f"person-{i}")
        except Exception as e:  # the caller looks at it
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    monkeypatch.undo()
    return results


def one_winner(results: list) -> None:
    conflicts = [r for r in results if isinstance(r, Conflict)]
    others = [r for r in results if isinstance(r, Exception) and not isinstance(r, Conflict)]
    assert not others, others
    assert len(conflicts) == 1, results
    assert "\n" not in str(conflicts[0])


@pytest.mark.parametrize("both_read_first", [False, True], ids=["released-together", "both-read-first"])
def test_two_counts_of_one_task_at_once_give_one_count_and_one_conflict(worklist, both_read_first, monkeypatch):
    url, tasks = worklist
    for i, task_id in enumerate(tasks[:4] if both_read_first else tasks[4:8]):
        # agreeing with the record the task goes to review; off by one it asks for a recount, which a late first count must not become
        qty, status = (record_of(url, task_id), "in_review") if i % 2 else (record_of(url, task_id) + 1, "recount_requested")
        results = race(url, lambda store, who, t=task_id, q=qty: submit_count(store, t, q, person(who)), both_read_first, monkeypatch)
        one_winner(results)
        assert query(url, "SELECT count(*), min(count_index) FROM count_observations WHERE task_id = :t", t=task_id) == [(1, 0)]
        assert query(url, "SELECT status, version FROM tasks WHERE id = :t", t=task_id) == [(status, 1)]


@pytest.mark.parametrize("both_read_first", [False, True], ids=["released-together", "both-read-first"])
def test_two_reviews_of_one_task_at_once_give_one_resolution_and_one_conflict(worklist, both_read_first, monkeypatch):
    url, tasks = worklist
    for task_id in tasks[8:12] if both_read_first else tasks[12:16]:
        qty = record_of(url, task_id)
        with opened(url) as store:
            submit_count(store, task_id, qty, person("counter"))
        results = race(url, lambda store, who, t=task_id, q=qty: review(store, t, True, person(who), final=q), both_read_first, monkeypatch)
        one_winner(results)
        winner = next(r for r in results if not isinstance(r, Exception))
        assert query(url, "SELECT count(*), min(reviewed_by), min(decision) FROM resolutions WHERE task_id = :t", t=task_id) == [
            (1, winner.reviewed_by, "approved")]
        assert query(url, "SELECT status, version FROM tasks WHERE id = :t", t=task_id) == [("approved", 2)]


@pytest.mark.parametrize("big", [2**31, 2**40])
def test_ids_beyond_postgresqls_integer_are_not_found_rather_than_a_database_error(worklist, big):
    url, _ = worklist
    with opened(url) as store:
        for call in (task_detail, counter_view, get_run_summary, snapshot_photo, lambda store, i: submit_count(store, i, 1, person("x"))):
            with pytest.raises(NotFound):
                call(store, big)


# ---------------------------------------------------------------- two shards, one database


def torchrun_audit(tiny_artifact, bucket, url: str, name: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 --no-python bintally audit run ...`: two shards scoring into one database."""
    command = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python", str(BIN / "bintally"), "audit", "run",
               "--model", str(tiny_artifact.path), "--data", str(bucket), "--db", url, "--budget", str(BUDGET),
               "--control", str(CONTROL), "--backend", BACKEND, "--name", name, "--no-progress"]
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def check_open_run(url: str, name: str, shard_scored: tuple[int, int] = (PHOTOS // 2, PHOTOS // 2)) -> int:
    """The run is open, every snapshot scored once, both shards recorded, and its tasks selected exactly once."""
    [(run_id, status, world, opened_at)] = query(url, "SELECT id, status, world_size, opened_at FROM audit_runs WHERE name = :n", n=name)
    assert (status, world) == ("open", 2) and opened_at is not None
    scores = query(url, "SELECT s.bin_id, c.score, c.problem FROM scores c JOIN snapshots s ON s.id = c.snapshot_id WHERE c.run_id = :r",
                   r=run_id)
    assert len(scores) == PHOTOS and len({bin_id for bin_id, _, _ in scores}) == PHOTOS
    assert all(score is not None and problem is None for _, score, problem in scores)
    assert query(url, "SELECT count(*), count(DISTINCT bin_id) FROM snapshots") == [(PHOTOS, PHOTOS)]
    assert query(url, "SELECT rank, scored, unreadable FROM run_shards WHERE run_id = :r ORDER BY rank", r=run_id) == [
        (0, shard_scored[0], 0), (1, shard_scored[1], 0)]
    tasks = query(url, "SELECT snapshot_id, rank, selected_by, status, score FROM tasks WHERE run_id = :r", r=run_id)
    n_model, n_control = math.ceil(BUDGET * PHOTOS), math.ceil(CONTROL * PHOTOS)
    assert len(tasks) == n_model + n_control == len({t[0] for t in tasks}) == len({t[1] for t in tasks})
    assert sorted(t[2] for t in tasks) == ["control"] * n_control + ["model"] * n_model
    assert {t[3] for t in tasks} == {"requested"}
    top = sorted((score for _, score, _ in scores), reverse=True)[:n_model]
    assert sorted((t[4] for t in tasks if t[2] == "model"), reverse=True) == pytest.approx(top)
    return run_id


def test_two_torchrun_shards_score_into_one_database_and_the_same_command_changes_nothing(fresh_pg_db, tiny_artifact, bucket):
    first = torchrun_audit(tiny_artifact, bucket, fresh_pg_db, "two-shards")
    assert first.stdout.count(f"scored {PHOTOS // 2} of {PHOTOS // 2} bin(s)") == 2, first.stdout
    check_open_run(fresh_pg_db, "two-shards")
    before = dump(fresh_pg_db)

    again = torchrun_audit(tiny_artifact, bucket, fresh_pg_db, "two-shards")
    assert again.stdout.count("already holds these snapshots: nothing to do") == 2, again.stdout
    assert dump(fresh_pg_db) == before


def test_a_run_missing_a_shard_stays_scoring_and_the_missing_shard_opens_it(fresh_pg_db, tiny_artifact, bucket, counter, monkeypatch):
    settings = config(tiny_artifact, bucket, fresh_pg_db, name="late-shard", batch_size=2)
    first = audit_run(settings, counter=counter, shard=(0, 2))
    assert (first.status, first.scored, first.tasks, first.control) == ("scoring", PHOTOS // 2, 0, 0)

    # shard 1 dies after its first committed batch (as a killed process would: no run_shards row)
    save_batch, batches = run_module.save_batch, []

    def save_then_die(*args):
        save_batch(*args)
        batches.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "save_batch", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        audit_run(settings, counter=counter, shard=(1, 2))
    monkeypatch.undo()
    assert query(fresh_pg_db, "SELECT status, opened_at FROM audit_runs") == [("scoring", None)]
    assert query(fresh_pg_db, "SELECT rank FROM run_shards") == [(0,)]
    assert query(fresh_pg_db, "SELECT count(*) FROM scores") == [(PHOTOS // 2 + 2,)]
    assert query(fresh_pg_db, "SELECT count(*) FROM tasks") == [(0,)]
    assert audit_run(settings, counter=counter, shard=(0, 2)).status == "scoring"  # shard 0 again: nothing new, still waiting

    last = audit_run(settings, counter=counter, shard=(1, 2))  # the missing shard: resumes after its committed batch
    assert (last.status, last.reused, last.scored) == ("open", True, PHOTOS // 2 - 2)
    assert (last.tasks, last.control) == (math.ceil(BUDGET * PHOTOS), math.ceil(CONTROL * PHOTOS))
    # every snapshot scored once; shard 1's row counts what its last attempt scored (the killed one wrote no row)
    check_open_run(fresh_pg_db, "late-shard", shard_scored=(PHOTOS // 2, PHOTOS // 2 - 2))
