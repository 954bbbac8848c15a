"""Per-line recounts on SQLite and on a real PostgreSQL server: the record's SKU lines stored with the snapshot, blind
counts per line (found SKUs too), the recount rule per line and in total, reviews with final_lines, per-line labels,
the scorer's explanation, and a store of schema 0001 with data upgraded in place.

The snapshots are real sample photos with their ABID BIN_FCSKU_DATA lines (tests/lined.py); the HTTP API and the
dashboard's per-line forms are in test_audit_http.py and test_audit_dashboard.py.
"""

from __future__ import annotations

import csv
import json
import threading

import pytest

from bintally.audit import Conflict, counter_view, list_tasks, open_store, review, submit_count, task_detail
from bintally.audit.queries import approved_labels, approved_line_labels
from bintally.audit.store import database_url, known_revisions
from bintally.data.records import SkuLine
from bintally.errors import ConfigError
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.lined import THREE_LINES, TWO_LINES, lined_run, lined_snapshot, query, record_lines_of, totals_snapshot
from tests.people_helpers import person

TOTALS_ONLY = "00452"
A, B = "B008LT0NUO", "B00ABVSMQC"  # the record of 00450: A x2, B x1
C = "B001P3NU30"  # 00451 adds C x1 (and holds A x2, B x1)
FOUND = "B0FOUNDSKU"


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
def sqlite_url(tmp_path) -> str:
    return database_url(str(tmp_path / "audit.db"))


def open_lined(url: str, model, counter, tolerance: int = 0):
    """(store, tasks by bin id) of an open run over 00450 and 00451 with their lines and 00452 by its total."""
    lined_run(url, model, [lined_snapshot(TWO_LINES), lined_snapshot(THREE_LINES), totals_snapshot(TOTALS_ONLY)], counter,
              tolerance=tolerance)
    store = open_store(url)
    return store, {t["bin_id"]: t for t in list_tasks(store)}


@pytest.fixture
def lined(url, tiny_artifact, counter):
    store, tasks = open_lined(url, tiny_artifact.path, counter)
    yield url, store, tasks
    store.close()


@pytest.fixture
def sqlite_lined(sqlite_url, tiny_artifact, counter):
    store, tasks = open_lined(sqlite_url, tiny_artifact.path, counter)
    yield sqlite_url, store, tasks
    store.close()


def written(url: str) -> dict:
    return {t: query(url, f"SELECT count(*) FROM {t}")[0][0]
            for t in ("count_observations", "count_lines", "resolutions", "resolution_lines")}


def count_lines(url: str, task_id: int) -> list[tuple]:
    return query(url, "SELECT o.count_index, l.sku, l.counted_qty FROM count_lines l JOIN count_observations o "
                      "ON o.id = l.observation_id WHERE o.task_id = :t ORDER BY o.count_index, l.id", t=task_id)


# ---------------------------------------------------------------- storing the lines


def test_the_record_lines_are_stored_with_their_snapshot_once(lined, tiny_artifact, counter):
    url, store, tasks = lined
    stored = query(url, "SELECT l.position, l.sku, l.record_qty, l.length_in, l.width_in, l.height_in, l.weight_lb FROM snapshot_lines l "
                        "JOIN snapshots s ON s.id = l.snapshot_id WHERE s.bin_id = :b ORDER BY l.position", b=f"bin-{THREE_LINES}")
    expected = record_lines_of(THREE_LINES)
    assert [(p, sku, qty) for p, sku, qty, *_ in stored] == [(i, line.sku, line.qty) for i, line in enumerate(expected)]
    assert [row[3:] for row in stored] == [pytest.approx((x.length_in, x.width_in, x.height_in, x.weight_lb)) for x in expected]
    assert tasks[f"bin-{THREE_LINES}"]["record_qty"] == sum(line.qty for line in expected) == 4
    assert query(url, "SELECT count(*) FROM snapshot_lines l JOIN snapshots s ON s.id = l.snapshot_id WHERE s.bin_id = :b",
                 b=f"bin-{TOTALS_ONLY}") == [(0,)]
    before = query(url, "SELECT count(*) FROM snapshot_lines")

    again = lined_run(url, tiny_artifact.path, [lined_snapshot(TWO_LINES), lined_snapshot(THREE_LINES), totals_snapshot(TOTALS_ONLY)],
                      counter, name="lined-again")  # another run over the same snapshots: no line twice
    assert again.reused is False and query(url, "SELECT count(*) FROM snapshot_lines") == before
    assert query(url, "SELECT count(*) FROM snapshots") == [(3,)]

    swapped = (SkuLine(A, 1), SkuLine(B, 2))  # the same photo and total, other lines: another snapshot with its own lines
    lined_run(url, tiny_artifact.path, [lined_snapshot(TWO_LINES, lines=swapped)], counter, name="swapped")
    assert query(url, "SELECT count(*) FROM snapshots WHERE bin_id = :b", b=f"bin-{TWO_LINES}") == [(2,)]
    assert sorted(query(url, "SELECT l.sku, l.record_qty FROM snapshot_lines l JOIN snapshots s ON s.id = l.snapshot_id "
                             "WHERE s.bin_id = :b", b=f"bin-{TWO_LINES}")) == sorted([(A, 2), (B, 1), (A, 1), (B, 2)])


# ---------------------------------------------------------------- counting per line


def test_a_lined_task_is_counted_per_line_and_its_total_is_their_sum(lined):
    url, store, tasks = lined
    two, three = tasks[f"bin-{TWO_LINES}"]["id"], tasks[f"bin-{THREE_LINES}"]["id"]
    outcome = submit_count(store, two, None, person("ann"), lines={A: 2, B: 1})
    assert (outcome.status, outcome.count_index) == ("in_review", 0)
    assert query(url, "SELECT counted_qty FROM count_observations WHERE task_id = :t", t=two) == [(3,)]
    assert count_lines(url, two) == [(0, A, 2), (0, B, 1)]
    assert submit_count(store, three, 4, person("ann"), lines={C: 1, A: 2, B: 1}).status == "in_review"  # qty given too: their sum
    detail = task_detail(store, two)
    assert detail["counts"][0]["lines"] == {A: 2, B: 1}
    assert [(r["sku"], r["record_qty"], r["count"], r["recount"], r["final_qty"]) for r in detail["lines"]] == [
        (A, 2, 2, None, None), (B, 1, 1, None, None)]


def test_a_line_off_the_record_asks_for_a_recount_even_when_the_total_is_right(lined, tiny_artifact, counter):
    url, store, tasks = lined
    task = tasks[f"bin-{TWO_LINES}"]["id"]
    assert submit_count(store, task, None, person("ann"), lines={A: 3, B: 0}).status == "recount_requested"  # 3 items, as recorded
    assert counter_view(store, task)["count_index"] == 1
    assert submit_count(store, task, None, person("cy"), lines={A: 3, B: 0}, count_index=1).status == "in_review"
    assert count_lines(url, task) == [(0, A, 3), (0, B, 0), (1, A, 3), (1, B, 0)]

    # tolerance 1: a line off by one is within it, a line off by two is not
    run = lined_run(url, tiny_artifact.path, [lined_snapshot(TWO_LINES), lined_snapshot(THREE_LINES)], counter, name="tolerant", tolerance=1)
    tolerant = {t["bin_id"]: t["id"] for t in list_tasks(store, run_id=run.run_id)}
    assert submit_count(store, tolerant[f"bin-{TWO_LINES}"], None, person("ann"), lines={A: 3, B: 0}).status == "in_review"
    assert submit_count(store, tolerant[f"bin-{THREE_LINES}"], None, person("ann"), lines={C: 1, A: 0, B: 3}).status == "recount_requested"


def test_a_found_sku_is_an_extra_line_against_a_record_of_zero(lined):
    url, store, tasks = lined
    task = tasks[f"bin-{THREE_LINES}"]["id"]
    outcome = submit_count(store, task, None, person("ann"), lines={C: 1, A: 2, B: 1}, found={FOUND: 1})
    assert outcome.status == "recount_requested"  # 5 items against a record of 4, and a line the record does not have
    assert query(url, "SELECT counted_qty FROM count_observations WHERE task_id = :t", t=task) == [(5,)]
    submit_count(store, task, None, person("cy"), lines={C: 1, A: 2, B: 1}, found={FOUND: 1}, count_index=1)
    with pytest.raises(ConfigError, match="neither on the record nor found by a count"):
        review(store, task, True, person("bo"), reason="found", final_lines={C: 1, A: 2, B: 1, "B0TYPO": 1})
    resolution = review(store, task, True, person("bo"), reason="found", final_lines={C: 1, A: 2, B: 1, FOUND: 1})
    assert (resolution.final_qty, resolution.record_qty, resolution.variance, resolution.outcome) == (5, 4, 1, "record_wrong")
    assert query(url, "SELECT r.sku, r.record_qty, r.final_qty, r.variance FROM resolution_lines r JOIN resolutions s "
                      "ON s.id = r.resolution_id WHERE s.task_id = :t ORDER BY r.id", t=task) == [
        (C, 1, 1, 0), (A, 2, 2, 0), (B, 1, 1, 0), (FOUND, 0, 1, 1)]
    found_row = task_detail(store, task)["lines"][-1]
    assert (found_row["sku"], found_row["on_record"], found_row["record_qty"], found_row["count"], found_row["recount"],
            found_row["final_qty"], found_row["variance"]) == (FOUND, False, 0, 1, 1, 1, 1)


@pytest.mark.parametrize("count, words", [
    (dict(lines={A: 2}), "missing B00ABVSMQC"),
    (dict(lines={A: 2, B: 1, "B0TYPO": 1}), "B0TYPO not on the record"),
    (dict(lines={A: -1, B: 1}), "must be from 0"),
    (dict(lines={A: 2.5, B: 1}), "must be a whole number"),
    (dict(lines={A: "2", B: 1}), "must be a whole number"),
    (dict(lines=[A, B]), "must be an object of SKU: quantity"),
    (dict(lines={"": 2, B: 1}), "a SKU must be text"),
    (dict(qty=2), "counted per SKU line"),
    (dict(qty=4, lines={A: 2, B: 1}), "qty 4 is not the sum of the SKU lines (3)"),
    (dict(lines={A: 2, B: 1}, found={B: 1}), "on the record: count them under lines"),
    (dict(lines={A: 2, B: 1}, found={FOUND: 0}), "must be at least 1"),
])
def test_bad_line_counts_are_refused_and_record_nothing(lined, count, words):
    url, store, tasks = lined
    before = written(url)
    with pytest.raises(ConfigError) as refused:
        submit_count(store, tasks[f"bin-{TWO_LINES}"]["id"], count.get("qty"), person("ann"), **{k: v for k, v in count.items() if k != "qty"})
    assert words in str(refused.value) and "\n" not in str(refused.value)
    assert written(url) == before and list_tasks(store, status="requested")[0]["status"] == "requested"


def test_a_totals_only_task_keeps_its_flow_and_takes_no_lines(lined):
    url, store, tasks = lined
    task = tasks[f"bin-{TOTALS_ONLY}"]
    with pytest.raises(ConfigError, match="no SKU lines on its record"):
        submit_count(store, task["id"], None, person("ann"), lines={A: 1})
    assert counter_view(store, task["id"])["lines"] == []
    assert submit_count(store, task["id"], task["record_qty"] + 1, person("ann")).status == "recount_requested"
    submit_count(store, task["id"], task["record_qty"] + 1, person("cy"), count_index=1)
    with pytest.raises(ConfigError, match="final quantity \\(final\\) alone"):
        review(store, task["id"], True, person("bo"), final_lines={A: 1})
    resolution = review(store, task["id"], True, person("bo"), final=task["record_qty"] + 1, reason="found")
    assert resolution.lines == [] and written(url)["count_lines"] == 0 and written(url)["resolution_lines"] == 0


def test_a_retried_lined_count_is_recorded_once(lined):
    url, store, tasks = lined
    task = tasks[f"bin-{TWO_LINES}"]["id"]
    first = submit_count(store, task, None, person("ann"), idempotency_key="lined-1", lines={A: 2, B: 2})
    again = submit_count(store, task, None, person("ann"), idempotency_key="lined-1", lines={A: 2, B: 2})
    assert again.replayed and (again.status, again.count_index) == (first.status, first.count_index) == ("recount_requested", 0)
    with pytest.raises(Conflict, match="already used"):
        submit_count(store, task, None, person("ann"), idempotency_key="lined-1", lines={A: 3, B: 1})  # the same total, other lines
    assert count_lines(url, task) == [(0, A, 2), (0, B, 2)]


def test_two_lined_counts_at_once_give_one_count_and_one_conflict(lined):
    url, _, tasks = lined
    task = tasks[f"bin-{THREE_LINES}"]["id"]
    stores = [open_store(url) for _ in range(2)]  # two engines, as two server processes
    barrier, results = threading.Barrier(2), [None, None]

    def count(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = submit_count(stores[i], task, None, person(f"person-{i}"), lines={C: i, A: 2, B: 1})
        except Conflict as e:
            results[i] = e

    threads = [threading.Thread(target=count, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert sum(isinstance(r, Conflict) for r in results) == 1, results
    winner = next(i for i, r in enumerate(results) if not isinstance(r, Conflict))
    assert count_lines(url, task) == [(0, C, winner), (0, A, 2), (0, B, 1)]


# ---------------------------------------------------------------- reviews and labels


def test_a_lined_review_needs_final_lines_and_records_each_lines_variance(lined):
    url, store, tasks = lined
    task = tasks[f"bin-{TWO_LINES}"]["id"]
    submit_count(store, task, None, person("ann"), lines={A: 3, B: 0})
    submit_count(store, task, None, person("cy"), lines={A: 3, B: 0}, count_index=1)
    for kwargs, words in ((dict(), "give each SKU's final quantity (final_lines)"),
                          (dict(final=3), "give each SKU's final quantity (final_lines)"),
                          (dict(final_lines={A: 3}), "missing B00ABVSMQC"),
                          (dict(final=4, final_lines={A: 3, B: 0}), "final 4 is not the sum of final_lines (3)"),
                          (dict(final_lines={A: 3, B: -1}), "must be from 0"),
                          (dict(final_lines={A: 3, B: 0}), "give a reason")):  # the total agrees, two lines do not
        with pytest.raises(ConfigError, match=words.replace("(", "\\(").replace(")", "\\)")):
            review(store, task, True, person("bo"), **kwargs)
    assert written(url)["resolutions"] == 0
    resolution = review(store, task, True, person("bo"), reason="misplaced", final_lines={A: 3, B: 0})
    assert (resolution.final_qty, resolution.record_qty, resolution.variance, resolution.outcome) == (3, 3, 0, "record_wrong")
    detail = task_detail(store, task)
    assert [(r["sku"], r["record_qty"], r["count"], r["recount"], r["final_qty"], r["variance"]) for r in detail["lines"]] == [
        (A, 2, 3, 3, 3, 1), (B, 1, 0, 0, 0, -1)]
    assert detail["resolution"]["lines"] == [{"sku": A, "record_qty": 2, "final_qty": 3, "variance": 1},
                                             {"sku": B, "record_qty": 1, "final_qty": 0, "variance": -1}]
    assert detail["status"] == "approved"


def test_approved_lined_recounts_are_labels_per_line_and_in_total(lined, tmp_path):
    url, store, tasks = lined
    two, totals = tasks[f"bin-{TWO_LINES}"], tasks[f"bin-{TOTALS_ONLY}"]
    submit_count(store, two["id"], None, person("ann"), lines={A: 2, B: 1})
    review(store, two["id"], True, person("bo"), final_lines={A: 2, B: 1})
    submit_count(store, totals["id"], totals["record_qty"], person("ann"))
    review(store, totals["id"], True, person("bo"), final=totals["record_qty"])
    assert {label["bin_id"]: label["count"] for label in approved_labels(store)} == {
        f"bin-{TWO_LINES}": 3, f"bin-{TOTALS_ONLY}": totals["record_qty"]}  # the bin total, as before
    assert [(r["bin_id"], r["sku"], r["final_qty"], r["record_qty"], r["variance"], r["task_id"]) for r in approved_line_labels(store)] == [
        (f"bin-{TWO_LINES}", A, 2, 2, 0, two["id"]), (f"bin-{TWO_LINES}", B, 1, 1, 0, two["id"])]

    out = tmp_path / "lines.csv"
    result = run_cli("audit", "labels", "--lines", "--out", out, "--db", url)
    assert result.returncode == 0 and "wrote 2 SKU line label(s)" in result.stdout, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["bin_id", "image", "sku", "final_qty", "record_qty", "variance", "task_id", "approved_at"]
    assert [(r["sku"], r["final_qty"], r["variance"]) for r in rows] == [(A, "2", "0"), (B, "1", "0")]
    assert rows[0]["image"] == two["image"] and rows[0]["approved_at"].endswith("Z")
    assert_one_line_error(run_cli("audit", "labels", "--lines", "--out", out, "--db", url), "exists", "--overwrite")


def test_line_labels_and_the_export_are_spreadsheet_safe(sqlite_url, tiny_artifact, counter, tmp_path, monkeypatch):
    from bintally.audit import run as run_module

    hostile = (SkuLine("=HYPERLINK(\"http://x\")", 2), SkuLine("@SUM(A1)", 1), SkuLine("-B0DASH", 0))
    explain(monkeypatch, run_module, "=cmd|' /C calc'!A0")
    lined_run(sqlite_url, tiny_artifact.path, [lined_snapshot(TWO_LINES, bin_id="+bin", lines=hostile)], counter, name="hostile")
    store = open_store(sqlite_url)
    task = list_tasks(store)[0]["id"]
    final = {line.sku: line.qty for line in hostile}
    submit_count(store, task, None, person("ann"), lines=final)
    review(store, task, True, person("bo"), final_lines=final)
    run_cli("audit", "labels", "--lines", "--out", tmp_path / "lines.csv", "--db", sqlite_url)
    rows = list(csv.DictReader((tmp_path / "lines.csv").open()))
    assert [(r["bin_id"], r["sku"]) for r in rows] == [("'+bin", "'=HYPERLINK(\"http://x\")"), ("'+bin", "'@SUM(A1)"), ("'+bin", "'-B0DASH")]
    assert run_cli("audit", "export", "--run", 1, "--out", tmp_path / "run.csv", "--db", sqlite_url).returncode == 0
    exported = list(csv.DictReader((tmp_path / "run.csv").open()))[0]
    assert exported["explanation"] == "'=cmd|' /C calc'!A0; the record says 3" and exported["bin_id"] == "'+bin" and exported["variance"] == "0"
    store.close()


# ---------------------------------------------------------------- the explanation


def explain(monkeypatch, run_module, text: str) -> None:
    """The scorer gives an explanation per bin (as the record-aware scorer will): here `text` and the record it read."""
    scores = run_module.score_bins

    def with_explanation(prediction, snapshots, score="auto"):
        return scores(prediction, snapshots, score) | {"explanation": [[text, f"the record says {s.record_qty}"] for s in snapshots]}

    monkeypatch.setattr(run_module, "score_bins", with_explanation)


def test_the_scorers_explanation_is_kept_for_the_reviewer_and_never_shown_the_counter(sqlite_url, tiny_artifact, counter, tmp_path,
                                                                                      monkeypatch):
    from bintally.audit import run as run_module

    explain(monkeypatch, run_module, "two SKUs recorded but the photo looks empty")
    lined_run(sqlite_url, tiny_artifact.path, [lined_snapshot(TWO_LINES), totals_snapshot(TOTALS_ONLY)], counter, name="explained")
    store = open_store(sqlite_url)
    tasks = list_tasks(store)
    assert [t["explanation"] for t in tasks] == [f"two SKUs recorded but the photo looks empty; the record says {t['record_qty']}"
                                                 for t in tasks]
    assert query(sqlite_url, "SELECT count(*) FROM scores WHERE explanation LIKE 'two SKUs%'") == [(2,)]
    listed = run_cli("audit", "list", "--db", sqlite_url)
    assert listed.stdout.splitlines()[0].endswith("explanation")
    assert sum("the photo looks empty; the record says" in line for line in listed.stdout.splitlines()) == 2
    blind = run_cli("audit", "show", tasks[0]["id"], "--blind", "--db", sqlite_url).stdout
    assert "explanation" not in blind and "photo looks empty" not in blind
    assert task_detail(store, tasks[0]["id"])["explanation"].startswith("two SKUs recorded")
    store.close()


# ---------------------------------------------------------------- the command line


def test_count_and_review_per_line_on_the_command_line(sqlite_lined):
    url, _, tasks = sqlite_lined
    task = tasks[f"bin-{TWO_LINES}"]["id"]
    counted = run_cli("audit", "count", task, "--line", f"{A}=3", "--line", f"{B}=0", "--by", "ann", "--db", url)
    assert counted.returncode == 0 and f"task {task}: count of 3 (2 SKU line(s)) recorded; it differs from the record" in counted.stdout
    recounted = run_cli("audit", "count", task, "--line", f"{A}=3", "--line", f"{B}=0", "--by", "cy", "--recount", "--db", url)
    assert recounted.returncode == 0 and "waits for a review" in recounted.stdout
    shown = json.loads(run_cli("audit", "show", task, "--db", url).stdout)
    assert [(r["sku"], r["record_qty"], r["count"], r["recount"]) for r in shown["lines"]] == [(A, 2, 3, 3), (B, 1, 0, 0)]
    assert_one_line_error(run_cli("audit", "review", task, "--approve", "--final", "3", "--by", "bo", "--db", url), "final_lines")
    reviewed = run_cli("audit", "review", task, "--approve", "--final-line", f"{A}=3", "--final-line", f"{B}=0", "--reason", "misplaced",
                       "--by", "bo", "--db", url)
    assert reviewed.returncode == 0, reviewed.stderr
    assert "final quantity 3 against a record of 3 (variance +0, record_wrong); 2 SKU line(s), off the record: " \
           f"{A} +1, {B} -1" in reviewed.stdout


def test_the_blind_view_lists_the_skus_to_count_and_never_a_recorded_quantity(sqlite_lined):
    url, store, tasks = sqlite_lined
    task = tasks[f"bin-{THREE_LINES}"]["id"]
    submit_count(store, task, None, person("ann"), lines={C: 1, A: 5, B: 1})
    shown = run_cli("audit", "show", task, "--blind", "--db", url)
    view = json.loads(shown.stdout)
    expected = record_lines_of(THREE_LINES)
    assert [line["sku"] for line in view["lines"]] == [line.sku for line in expected]
    assert [line["length_in"] for line in view["lines"]] == pytest.approx([line.length_in for line in expected])
    assert all(set(line) == {"sku", "length_in", "width_in", "height_in", "weight_lb"} for line in view["lines"])
    assert not {"record_qty", "predicted", "expected", "score", "p_record", "probabilities", "counts", "explanation"} & set(view)
    assert "qty" not in shown.stdout and "record" not in shown.stdout and '"count"' not in shown.stdout
    assert view["count_index"] == 1  # a recount was asked for: still nothing of the first count


@pytest.mark.parametrize("args, fragments", [
    (["--line", f"{A}=2"], ["missing B00ABVSMQC"]),
    (["--line", f"{A}=2", "--line", f"{B}=1", "--line", "B0TYPO=1"], ["B0TYPO not on the record", "found"]),
    (["--line", f"{A}=-1", "--line", f"{B}=1"], ["--line", "0 or more"]),
    (["--line", f"{A}=two", "--line", f"{B}=1"], ["--line", "'two' is not a whole number"]),
    (["--line", f"{A}=2.5", "--line", f"{B}=1"], ["--line", "'2.5' is not a whole number"]),
    (["--line", A], ["--line", "SKU=QTY"]),
    (["--line", f"{A}=2", "--line", f"{A}=1"], ["--line", "given twice"]),
    (["--qty", "3"], ["counted per SKU line"]),
    (["--qty", "4", "--line", f"{A}=2", "--line", f"{B}=1"], ["qty 4 is not the sum"]),
    (["--line", f"{A}=2", "--line", f"{B}=1", "--found", f"{B}=1"], ["on the record"]),
    ([], ["--qty", "--line SKU=QTY"]),
])
def test_bad_line_counts_on_the_command_line_are_one_line_and_record_nothing(sqlite_lined, args, fragments):
    url, _, tasks = sqlite_lined
    before = written(url)
    result = run_cli("audit", "count", tasks[f"bin-{TWO_LINES}"]["id"], *args, "--by", "ann", "--db", url)
    assert_one_line_error(result, *fragments)
    assert written(url) == before


def test_lines_for_a_totals_only_task_and_bad_final_lines_on_the_command_line(sqlite_lined):
    url, store, tasks = sqlite_lined
    totals = run_cli("audit", "count", tasks[f"bin-{TOTALS_ONLY}"]["id"], "--line", f"{A}=1", "--by", "ann", "--db", url)
    assert_one_line_error(totals, "no SKU lines on its record")
    task = tasks[f"bin-{TWO_LINES}"]["id"]
    submit_count(store, task, None, person("ann"), lines={A: 2, B: 1})
    for extra, words in ((["--final-line", f"{A}=2"], "missing B00ABVSMQC"),
                         (["--final-line", f"{A}=2", "--final-line", f"{B}=1", "--final-line", f"{FOUND}=1"], "neither on the record"),
                         (["--final-line", f"{A}=x"], "not a whole number")):
        assert_one_line_error(run_cli("audit", "review", task, "--approve", *extra, "--by", "bo", "--db", url), words)
    assert written(url)["resolutions"] == 0


# ---------------------------------------------------------------- a store of schema 0001


def test_a_store_of_schema_0001_with_data_is_upgraded_and_stays_readable(url):
    from alembic import command
    from sqlalchemy import insert

    from bintally.audit.schema import AuditRun, CountObservation, Resolution, Score, Snapshot, Task, utcnow
    from bintally.audit.store import Store, alembic_config

    old = Store(url)
    now = utcnow()

    def add(connection, table, **values) -> int:
        return connection.execute(insert(table.__table__).values(**values)).inserted_primary_key[0]

    with old.engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
        run = add(connection, AuditRun, name="old-run", model_name="m", model_version="v1", source="bins.csv",
                  settings={"tolerance": 0, "budget": 1.0}, world_size=1, status="open", created_by="ann", created_at=now, opened_at=now)
        tasks = []
        for i, (record, status) in enumerate(((3, "approved"), (2, "requested")), start=1):
            snapshot = add(connection, Snapshot, key=f"k{i}", bin_id=f"old-{i}", image_uri=f"/photos/{i}.jpg", sha256="s",
                           record_qty=record, created_at=now)
            probabilities = {"0": 0.1, "1": 0.2, "2": 0.3, "3": 0.4}
            add(connection, Score, run_id=run, snapshot_id=snapshot, p_record=0.4, score=0.6, predicted=3, expected=2.0,
                probabilities=probabilities)
            tasks.append(add(connection, Task, run_id=run, snapshot_id=snapshot, rank=i, score=0.6, probabilities=probabilities,
                             predicted=3, expected=2.0, selected_by="model", status=status, version=0, updated_at=now))
        add(connection, CountObservation, task_id=tasks[0], count_index=0, counted_qty=4, counted_by="ann", counted_at=now)
        add(connection, Resolution, task_id=tasks[0], decision="approved", final_qty=4, record_qty=3, variance=1, outcome="record_wrong",
            reason="found", reviewed_by="bo", reviewed_at=now, approved_by="bo", approved_at=now)
    old.close()
    assert query(url, "SELECT version_num FROM alembic_version") == [("0001",)]

    store = open_store(url)
    try:
        assert query(url, "SELECT version_num FROM alembic_version") == [(known_revisions()[1],)]
        from bintally.audit import list_runs

        [summary] = list_runs(store)
        assert (summary["name"], summary["metrics"]["bins"], summary["metrics"]["confirmed_errors"]) == ("old-run", 2, 1)
        listed = list_tasks(store)
        assert [(t["bin_id"], t["status"], t["explanation"]) for t in listed] == [("old-1", "approved", None), ("old-2", "requested", None)]
        detail = task_detail(store, tasks[0])
        assert detail["lines"] == [] and detail["counts"][0]["lines"] == {} and detail["resolution"]["final_qty"] == 4
        assert detail["resolution"]["lines"] == []
        assert [(label["bin_id"], label["count"]) for label in approved_labels(store)] == [("old-1", 4)]
        assert approved_line_labels(store) == [] and counter_view(store, tasks[1])["lines"] == []
        assert submit_count(store, tasks[1], 2, person("cy")).status == "in_review"  # the old flow goes on, by total
        assert review(store, tasks[1], True, person("bo"), final=2).lines == []
    finally:
        store.close()
