"""People and permissions through the real command line, on SQLite and on a real PostgreSQL: users and hashed tokens,
every audit command's roles, `--by` against a token, disabled users and rotated tokens, separation of duties (also
under two racing sessions), and tokens kept out of errors, the event log and exports."""

from __future__ import annotations

import functools
import re
import threading

import pytest
from sqlalchemy import select

from bintally.audit import AuditConfig, Conflict, audit_run, list_tasks, open_store, review, submit_count
from bintally.audit import workflow as workflow_module
from bintally.audit.people import Forbidden, Unauthorized, authenticate, events
from bintally.audit.schema import Token
from bintally.audit.store import database_url
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.lined import query, totals_snapshot
from tests.people_helpers import person

STEMS = ["00452", "00453", "00454", "00455", "00456", "00457"]
TOKEN = re.compile(r"btk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")


@pytest.fixture(scope="module")
def counter(tiny_artifact):
    from bintally.inference import Counter

    return Counter.load(tiny_artifact.path, "torch")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return database_url(str(tmp_path / "audit.db"))
    return request.getfixturevalue("fresh_pg_db")


@pytest.fixture
def worklist(url, tiny_artifact, counter) -> tuple[str, list[dict]]:
    """An open run over six sample bins (by their totals), created by an auditor; its tasks in bin order."""
    config = AuditConfig(model=str(tiny_artifact.path), data="people.csv", db=url, name="people", budget=1.0, control=0.0,
                         backend="torch", progress=False)
    result = audit_run(config, person("al", {"auditor"}, kind="token"), snapshots=[totals_snapshot(s) for s in STEMS],
                       counter=counter, shard=(0, 1))
    assert result.status == "open" and result.tasks == len(STEMS)
    store = open_store(url)
    try:
        return url, sorted(list_tasks(store), key=lambda t: t["bin_id"])
    finally:
        store.close()


def add_user(url: str, tmp_path, name: str, *roles: str, admin: str | None = None) -> str:
    """`bintally audit user add` (as the admin whose token file is `admin`, else the owner of the store); the token's file."""
    options = [a for r in roles for a in ("--role", r)] + (["--token-file", admin] if admin else [])
    added = run_cli("audit", "user", "add", name, *options, "--db", url)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert TOKEN.fullmatch(token) and "shown only this once" in added.stderr and token not in added.stderr
    path = tmp_path / f"{name}.token"
    path.write_text(token + "\n")
    return str(path)


def cli(url: str, token_file: str | None, *args):
    return run_cli("audit", *args, "--db", url, *(["--token-file", token_file] if token_file else []))


def people(url: str, tmp_path) -> dict[str, str]:
    """The store's first admin (added by its owner, tokenless), then a counter, a second counter, a reviewer, an
    auditor and a reviewer who also counts; name -> token file."""
    files = {"root": add_user(url, tmp_path, "root", "admin")}
    for name, roles in {"ann": ["counter"], "cy": ["counter"], "bo": ["reviewer"], "al": ["auditor"], "dee": ["counter", "reviewer"]}.items():
        files[name] = add_user(url, tmp_path, name, *roles, admin=files["root"])
    return files


def tokens_of(files: dict[str, str]) -> list[str]:
    return [open(f).read().strip() for f in files.values()]


def status_of(url: str, task_id: int) -> str:
    return query(url, "SELECT status FROM tasks WHERE id = :t", t=task_id)[0][0]


def test_only_hashes_are_stored_and_each_command_checks_its_role(worklist, tmp_path):
    url, tasks = worklist
    files = people(url, tmp_path)
    stored = query(url, "SELECT lookup, salt, digest FROM tokens")
    for token in tokens_of(files):
        assert all(token not in str(row) and token.split("_", 2)[2] not in str(row) for row in stored)
    first, second = tasks[0], tasks[1]

    refused = {("bo", "count", first["id"], "--qty", "1"): "needs the role counter",
               ("ann", "review", first["id"], "--reject"): "needs the role reviewer",
               ("ann", "show", first["id"]): "needs the role reviewer or auditor",
               ("ann", "list"): "needs the role reviewer or auditor",
               ("ann", "export", "--run", "1", "--out", tmp_path / "x.csv"): "needs the role auditor",
               ("bo", "labels", "--out", tmp_path / "l.csv"): "needs the role auditor",
               ("bo", "events"): "needs the role auditor or admin",
               ("al", "user", "add", "eve", "--role", "admin"): "needs the role admin",
               ("ann", "settings", "set", "separate_count_and_approval", "false"): "needs the role admin",
               ("ann", "assign", first["id"], "--to", "cy"): "needs the role reviewer or auditor",
               ("ann", "token", "rotate", "cy"): "needs the role admin"}
    before = query(url, "SELECT id, status, version, assignee FROM tasks ORDER BY id")
    for (who, *args), fragment in refused.items():
        assert_one_line_error(cli(url, files[who], *args), fragment, who)
    assert query(url, "SELECT id, status, version, assignee FROM tasks ORDER BY id") == before
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "l.csv").exists()

    assert cli(url, files["bo"], "assign", second["id"], "--to", "cy").returncode == 0
    assert_one_line_error(cli(url, files["ann"], "show", second["id"], "--blind"), "assigned to cy")
    assert_one_line_error(cli(url, files["ann"], "count", second["id"], "--qty", "1"), "assigned to cy")
    assert_one_line_error(cli(url, files["bo"], "assign", second["id"], "--to", "al"), "not an enabled user with the role counter")
    assert_one_line_error(cli(url, files["ann"], "count", first["id"], "--qty", "1", "--by", "bo"), "--by bo", "your token is ann's")

    blind = cli(url, files["ann"], "show", first["id"], "--blind")
    assert blind.returncode == 0 and "record" not in blind.stdout and "predicted" not in blind.stdout
    assert cli(url, files["ann"], "count", first["id"], "--qty", str(first["record_qty"])).returncode == 0
    assert_one_line_error(cli(url, files["ann"], "show", first["id"], "--blind"), "a counter sees only tasks that wait for a count")
    approved = cli(url, files["bo"], "review", first["id"], "--approve", "--final", str(first["record_qty"]))
    assert approved.returncode == 0, approved.stderr
    assert query(url, "SELECT c.counted_by, r.reviewed_by, r.approved_by, a.created_by FROM count_observations c JOIN resolutions r "
                      "ON r.task_id = c.task_id JOIN tasks t ON t.id = c.task_id JOIN audit_runs a ON a.id = t.run_id") == [("ann", "bo", "bo", "al")]
    log = cli(url, files["al"], "events", "--json")
    assert log.returncode == 0
    assert [a for a in ("run.create", "user.add", "task.assign", "task.count", "task.review") if f'"{a}"' not in log.stdout] == []
    assert '"actor": "ann"' in log.stdout and '"actor_kind": "token"' in log.stdout
    exported = cli(url, files["al"], "export", "--run", "1", "--out", tmp_path / "run.csv")
    assert exported.returncode == 0
    for token in tokens_of(files):
        assert token not in log.stdout and token not in (tmp_path / "run.csv").read_text()


def test_a_disabled_user_and_a_rotated_token_stop_at_once(worklist, tmp_path):
    url, tasks = worklist
    files = people(url, tmp_path)
    old_cy = open(files["cy"]).read().strip()
    assert cli(url, files["ann"], "list").returncode == 2
    assert cli(url, files["root"], "user", "disable", "ann").returncode == 0
    assert_one_line_error(cli(url, files["ann"], "count", tasks[0]["id"], "--qty", "1"), "user ann is disabled")
    assert_one_line_error(cli(url, files["root"], "token", "rotate", "ann"), "disabled")

    rotated = cli(url, files["cy"], "token", "rotate")  # her own
    assert rotated.returncode == 0 and TOKEN.fullmatch(rotated.stdout.strip()) and rotated.stdout.strip() != old_cy
    assert_one_line_error(cli(url, files["cy"], "count", tasks[0]["id"], "--qty", "1"), "replaced")
    (tmp_path / "cy.token").write_text(rotated.stdout)
    assert cli(url, files["cy"], "count", tasks[0]["id"], "--qty", str(tasks[0]["record_qty"])).returncode == 0
    listed = cli(url, files["root"], "user", "list", "--json")
    assert '"disabled": true' in listed.stdout and old_cy not in listed.stdout and rotated.stdout.strip() not in listed.stdout
    assert query(url, "SELECT count(*) FROM tokens WHERE revoked_at IS NOT NULL") == [(1,)]


@pytest.mark.parametrize("bad, fragment", [
    ("missing", ": "), ("folder", "is a folder"), ("empty", "is empty"), ("binary", "not UTF-8"),
    ("huge", "larger than the limit"), ("garbage", "the token is not valid")])
def test_bad_token_files_are_one_line_naming_the_file_never_the_token(tmp_path, bad, fragment):
    db = tmp_path / "a.db"
    assert run_cli("audit", "user", "add", "root", "--role", "admin", "--db", db).returncode == 0
    path = tmp_path / "t"
    contents = {"empty": b" \n", "binary": b"\xff\xfe", "huge": b"x" * 5000,
                "garbage": b"btk_0123456789abcdef_" + b"A" * 43}
    if bad == "folder":
        path.mkdir()
    elif bad in contents:
        path.write_bytes(contents[bad])
    line = assert_one_line_error(run_cli("audit", "events", "--db", db, "--token-file", path), fragment)
    assert "AAAAAAAAAA" not in line and (bad == "garbage" or str(path) in line)


def test_tokenless_use_is_the_file_owner_on_sqlite_and_refused_on_postgresql_once_it_has_users(worklist, tmp_path):
    url, tasks = worklist
    people(url, tmp_path)
    tokenless = cli(url, None, "count", tasks[0]["id"], "--qty", str(tasks[0]["record_qty"]), "--by", "sam")
    if url.startswith("sqlite"):
        assert tokenless.returncode == 0
        assert query(url, "SELECT actor, actor_kind FROM audit_events WHERE action = 'task.count'") == [("sam", "local")]
        assert "os user" in query(url, "SELECT origin FROM audit_events WHERE action = 'task.count'")[0][0]
    else:
        assert_one_line_error(tokenless, "this store has users: give your token (BINTALLY_TOKEN or --token-file)")
        assert status_of(url, tasks[0]["id"]) == "requested"


def test_separation_of_duties_holds_by_default_and_an_admin_may_lift_it(worklist, tmp_path):
    url, tasks = worklist
    files = people(url, tmp_path)
    own, off = tasks[0], tasks[1]
    assert cli(url, files["dee"], "count", own["id"], "--qty", str(own["record_qty"])).returncode == 0
    assert_one_line_error(cli(url, files["dee"], "review", own["id"], "--approve", "--final", str(own["record_qty"])),
                          "dee counted task", "separation of duties")
    assert status_of(url, own["id"]) == "in_review"

    assert cli(url, files["bo"], "assign", off["id"], "--to", "ann").returncode == 0
    assert cli(url, files["ann"], "count", off["id"], "--qty", str(off["record_qty"] + 1)).returncode == 0
    assert query(url, "SELECT status, assignee FROM tasks WHERE id = :t", t=off["id"]) == [("recount_requested", None)]
    assert_one_line_error(cli(url, files["ann"], "count", off["id"], "--qty", "1", "--recount"), "ann counted task", "first")
    assert_one_line_error(cli(url, files["bo"], "assign", off["id"], "--to", "ann"), "recount goes to someone else")
    assert cli(url, files["cy"], "count", off["id"], "--qty", str(off["record_qty"] + 1), "--recount").returncode == 0

    assert cli(url, files["root"], "settings", "set", "separate_count_and_approval", "false").returncode == 0
    assert cli(url, files["dee"], "review", own["id"], "--approve", "--final", str(own["record_qty"])).returncode == 0
    assert query(url, "SELECT action, detail FROM audit_events WHERE action = 'setting.set'")[0][0] == "setting.set"


def count_as_recorded(store, task: dict, by, index: int):
    return submit_count(store, task["id"], task["record_qty"], by, count_index=index)


def approve_as_recorded(store, task: dict, by):
    return review(store, task["id"], True, by, final=task["record_qty"])


@pytest.mark.parametrize("both_read_first", [False, True], ids=["released-together", "both-read-first"])
def test_one_person_racing_to_count_and_approve_never_approves_their_own_count(worklist, tmp_path, both_read_first, monkeypatch):
    """Two sessions of one person (who counts and reviews) released together: the count and the approval of the same task,
    or a recount and the approval. The approval never stands: it finds the task not yet in review, or the count."""
    url, tasks = worklist
    files = people(url, tmp_path)
    store = open_store(url)
    dee, ann = (authenticate(store, open(files[n]).read(), "test") for n in ("dee", "ann"))
    store.close()
    for i, task in enumerate(tasks[:4]):
        if i % 2:  # a recount against the approval
            setup = open_store(url)
            submit_count(setup, task["id"], task["record_qty"] + 1, ann)
            setup.close()
        count = functools.partial(count_as_recorded, task=task, by=dee, index=i % 2)
        approve = functools.partial(approve_as_recorded, task=task, by=dee)
        results = race(url, [count, approve], both_read_first, monkeypatch)
        assert not isinstance(results[0], Exception), results
        assert isinstance(results[1], (Conflict, Forbidden)) and "\n" not in str(results[1]), results
        assert query(url, "SELECT count(*) FROM resolutions WHERE task_id = :t", t=task["id"]) == [(0,)]
        assert status_of(url, task["id"]) == "in_review"


def race(url: str, actions, both_read_first: bool, monkeypatch) -> list:
    """Each action(store) in its own thread and store, released together (with both_read_first, only once both have
    read the task); each result or exception."""
    start, read = threading.Barrier(2), threading.Barrier(2)
    if both_read_first:
        original = workflow_module.get_task

        def get_task_then_wait(session, task_id):
            task = original(session, task_id)
            try:
                read.wait(timeout=2)
            except threading.BrokenBarrierError:  # SQLite: the second writer waits on the first's lock, not here
                pass
            return task

        monkeypatch.setattr(workflow_module, "get_task", get_task_then_wait)
    stores = [open_store(url) for _ in actions]
    results = [None] * len(actions)

    def go(i):
        try:
            start.wait(timeout=30)
            results[i] = actions[i](stores[i])
        except Exception as e:  # the caller looks at it
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(actions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    monkeypatch.undo()
    return results


def test_the_workflow_takes_a_principal_never_a_typed_name(worklist):
    url, tasks = worklist
    store = open_store(url)
    try:
        with pytest.raises(TypeError):
            submit_count(store, tasks[0]["id"], 1, "ann")
        with pytest.raises(Forbidden, match="needs the role counter"):
            submit_count(store, tasks[0]["id"], 1, person("bo", {"reviewer"}))
        with pytest.raises(Unauthorized):
            authenticate(store, "btk_" + "0" * 16 + "_" + "A" * 43, "test")
        assert [e["action"] for e in events(store)] == ["run.create"]
        assert store.session  # the store stays usable after refusals
        with store.session() as session:
            assert session.scalars(select(Token)).all() == []
    finally:
        store.close()
    assert status_of(url, tasks[0]["id"]) == "requested"
