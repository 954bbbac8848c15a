"""The audit stage on a SQLite store: scoring, selection, calibration, the count-and-review workflow, the CLI,
labels fed back to `bintally data index`, and bad input (one line, exit 2, nothing recorded lost or changed).

PostgreSQL, two shards and the HTTP endpoints are in test_audit_postgres.py, test_audit_http.py and
test_audit_dashboard.py.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bintally.audit import Conflict, NotFound, list_tasks, open_store, review, select_tasks, submit_count
from bintally.audit.scoring import discrepancy_scores, score_bins
from bintally.audit.snapshots import SnapshotIn
from bintally.errors import ConfigError
from bintally.evaluation.calibration import apply_temperature, ece, fit_temperature
from bintally.inference import Prediction
from bintally.labels import LabelSpace
from bintally.paths import SAMPLE_DIR
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.people_helpers import person

PHOTOS = sorted((SAMPLE_DIR / "bin-images").glob("*.jpg"))[:16]


def record_of(photo: Path) -> int:
    return json.loads((SAMPLE_DIR / "metadata" / f"{photo.stem}.json").read_text())["EXPECTED_QUANTITY"]


def write_csv(path: Path, rows: list[dict], columns=("bin_id", "image", "record_qty")) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_bins_csv(folder: Path) -> Path:
    """16 real sample photos with their records, as a bin_id,image,record_qty CSV (images relative to it)."""
    (folder / "photos").mkdir()
    rows = []
    for photo in PHOTOS:
        shutil.copy(photo, folder / "photos" / photo.name)
        rows.append({"bin_id": f"bin-{photo.stem}", "image": f"photos/{photo.name}", "record_qty": record_of(photo)})
    return write_csv(folder / "bins.csv", rows)


@pytest.fixture
def bins_csv(tmp_path) -> Path:
    return make_bins_csv(tmp_path)


def audit(db: Path, model, data, *extra) -> object:
    return run_cli("audit", "run", "--model", model, "--data", data, "--db", db, "--backend", "torch", "--no-progress", *extra)


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_artifact) -> Path:
    """A folder with bins.csv, its photos and audit.db: an open run over the 16 bins, budget 25% (4 bins by score)
    and control 10% (2 at random). Tests get a copy of the database (`opened_run`)."""
    folder = tmp_path_factory.mktemp("audit-template")
    result = audit(folder / "audit.db", tiny_artifact.path, make_bins_csv(folder), "--budget", "0.25", "--control", "0.1")
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def template_csv(template) -> Path:
    return template / "bins.csv"


@pytest.fixture
def opened_run(tmp_path, template) -> Path:
    db = tmp_path / "audit.db"
    with sqlite3.connect(template / "audit.db") as source, sqlite3.connect(db) as copy:
        source.backup(copy)
    return db


def rows(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(query).fetchall()


def table_sizes(db: Path) -> dict:
    return {t: rows(db, f"SELECT count(*) FROM {t}")[0][0]
            for t in ("snapshots", "audit_runs", "scores", "tasks", "count_observations", "resolutions")}


# ---------------------------------------------------------------- scoring, selection and calibration


def test_probability_of_maps_records_to_classes_and_overflow():
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]])  # counts 0, 1, 2 and "3+"
    with_overflow = LabelSpace(0, 2, overflow=True)
    assert with_overflow.probability_of(probs, [2, 0]).tolist() == [0.3, 0.7]
    assert with_overflow.probability_of(probs, [9, 5]).tolist() == [0.4, 0.1]  # above 2: the "3+" class
    without = LabelSpace(0, 3, overflow=False)
    assert without.probability_of(probs, [3, 4]).tolist() == [0.4, 0.0]  # no class for 4: no probability
    scores = discrepancy_scores(Prediction.of(with_overflow, probs), [2, 0])
    assert np.allclose(scores["score"], [0.7, 0.3])
    assert scores["predicted"].tolist() == [3, 0]
    assert np.allclose(scores["expected"], [2.0, 0.6])


def test_the_distance_score_is_the_expected_number_of_items_between_record_and_count():
    from bintally.audit.scoring import expected_distance, p_record_of

    space = LabelSpace(0, 2, overflow=True)  # counts 0, 1, 2 and "3+"
    probs = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.25, 0.75]])
    assert expected_distance(space, probs, [0, 9]).tolist() == [0.5, 0.25]  # 9 is above the classes: counted as 3
    scores = discrepancy_scores(Prediction.of(space, probs), [0, 9], score="distance")
    assert scores["score"].tolist() == [0.5, 0.25] and scores["p_record"].tolist() == [0.5, 0.75]
    assert p_record_of({"0": 0.5, "1": 0.5, "2": 0.0, "3+": 0.0}, 0) == 0.5
    assert p_record_of({"0": 0.1, "1": 0.9}, 4) == 0.0  # no class for 4


def test_selection_takes_the_top_share_or_a_threshold_plus_a_random_control_slice_of_the_rest():
    scores = np.array([0.1, 0.9, 0.5, 0.8, 0.2, 0.3, 0.7, 0.05, 0.6, 0.4])
    chosen, control = select_tasks(scores, 0.2, None, 0.3, np.random.default_rng(0))
    assert chosen.tolist() == [1, 3]
    assert len(control) == 3 and not set(control) & set(chosen)
    again = select_tasks(scores, 0.2, None, 0.3, np.random.default_rng(0))[1]
    assert again.tolist() == control.tolist()
    by_threshold, _ = select_tasks(scores, None, 0.6, 0.0, np.random.default_rng(0))
    assert by_threshold.tolist() == [1, 3, 6, 8]
    seen = set()
    for seed in range(200):  # the control slice is drawn from every unselected bin
        seen |= set(select_tasks(scores, 0.2, None, 0.1, np.random.default_rng(seed))[1].tolist())
    assert seen == set(range(10)) - {1, 3}


def test_temperature_scaling_fixes_overconfidence_and_keeps_the_most_likely_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 2000)
    logits = rng.normal(0, 1, (2000, 4))
    logits[np.arange(2000), labels] += 1.0
    honest = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    overconfident = apply_temperature(honest, 0.4)
    temperature = fit_temperature(overconfident, labels)
    assert 2.0 < temperature < 3.2  # undoes the sharpening by 1 / 0.4
    calibrated = apply_temperature(overconfident, temperature)
    assert ece(calibrated, labels) < ece(overconfident, labels) / 2
    assert (calibrated.argmax(1) == overconfident.argmax(1)).all()
    assert apply_temperature(overconfident, 1.0) is overconfident


def test_calibrate_stores_the_temperature_and_every_backend_applies_it(tmp_path, tiny_artifact, tiny_manifest):
    from bintally.inference import Counter

    model = tmp_path / "model"
    shutil.copytree(tiny_artifact.path, model)
    result = run_cli("calibrate", "--model", model, "--data", tiny_manifest, "--workers", "0", "--no-progress")
    assert result.returncode == 0, result.stderr
    meta = json.loads((model / "model.json").read_text())["calibration"]
    assert meta["split"] == "val" and meta["photos"] == 56 and meta["nll_after"] <= meta["nll_before"]
    assert f"temperature {meta['temperature']:g}" in result.stdout
    photos = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    raw = Counter.load(model, "torch", calibrated=False).probabilities(photos)
    for backend in ("torch", "onnx"):
        calibrated = Counter.load(model, backend).probabilities(photos)
        assert np.allclose(calibrated, apply_temperature(raw, meta["temperature"]), atol=1e-4), backend
    before = (model / "model.json").read_bytes()
    again = run_cli("calibrate", "--model", model, "--data", tiny_manifest, "--workers", "0", "--no-progress")
    assert_one_line_error(again, "already calibrated", "--overwrite")
    assert (model / "model.json").read_bytes() == before
    test_split = run_cli("calibrate", "--model", model, "--data", tiny_manifest, "--split", "test", "--overwrite")
    assert_one_line_error(test_split, "--split", "test split is for the final score")


def test_a_temperature_calibrates_probabilities_but_never_moves_a_median_decoded_count(tmp_path):
    from dataclasses import replace

    from bintally.inference import Counter
    from bintally.models.artifact import read_artifact
    from tests.conftest import make_artifact

    artifact = make_artifact(tmp_path / "ordinal", head="ordinal", seed=3)
    assert artifact.decoding == "median"
    photos = np.random.default_rng(1).normal(size=(32, 3, 64, 64)).astype(np.float32)
    raw = Counter.load(artifact.path, "torch", calibrated=False)
    before = raw.predict(photos).rows()
    replace(read_artifact(artifact.path), calibration={"method": "temperature", "temperature": 4.0}).write_metadata()
    calibrated = Counter.load(artifact.path, "torch")
    prediction = calibrated.predict(photos)
    probs, after = prediction.probabilities, prediction.rows()
    assert [r["count"] for r in after] == [r["count"] for r in before]
    assert not np.allclose(probs, raw.probabilities(photos), atol=1e-3)
    median_of_calibrated = artifact.labels.decode(probs, "median")  # what decoding the calibrated probabilities would give
    assert (median_of_calibrated != np.array([r["count"] for r in before])).any(), "T = 4 should move some medians"


# ---------------------------------------------------------------- the run, the workflow and the labels


def test_a_run_writes_a_ranked_worklist_and_a_rerun_changes_nothing(tmp_path, tiny_artifact, template_csv, opened_run):
    tasks = list_tasks(open_store(str(opened_run)))
    model = [t for t in tasks if t["selected_by"] == "model"]
    control = [t for t in tasks if t["selected_by"] == "control"]
    assert len(model) == 4 and len(control) == 2
    all_scores = sorted((s for (s,) in rows(opened_run, "SELECT score FROM scores")), reverse=True)
    assert len(all_scores) == 16
    assert [t["score"] for t in model] == pytest.approx(all_scores[:4], abs=1e-4)
    assert [t["rank"] for t in model] == [1, 2, 3, 4]
    assert all(t["rank"] > 4 for t in control)
    records = {f"bin-{p.stem}": record_of(p) for p in PHOTOS}
    assert all(t["record_qty"] == records[t["bin_id"]] for t in tasks)
    for t in tasks:  # the default score (auto): the record-aware P(record wrong), its totals variant for a CSV of totals
        probabilities = Prediction.of(LabelSpace.from_names(list(t["probabilities"])), np.array([list(t["probabilities"].values())]))
        expected = score_bins(probabilities, [SnapshotIn(t["bin_id"], "photo.jpg", t["record_qty"])], "auto")["score"][0]
        assert t["score"] == pytest.approx(expected, abs=1e-3)
    listed = run_cli("audit", "list", "--db", opened_run, "--run", "1")
    assert listed.returncode == 0 and len(listed.stdout.strip().splitlines()) == 1 + 6
    before = table_sizes(opened_run)
    again = audit(opened_run, tiny_artifact.path, template_csv, "--budget", "0.25", "--control", "0.1")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert table_sizes(opened_run) == before
    other = audit(opened_run, tiny_artifact.path, template_csv, "--budget", "0.5", "--control", "0.1", "--name", "bins-6f")
    assert other.returncode == 0, other.stderr  # another name: a second run over the same snapshots
    assert table_sizes(opened_run)["snapshots"] == 16 and table_sizes(opened_run)["audit_runs"] == 2


def test_a_mismatch_run_ranks_by_one_minus_p_record(tiny_artifact, template_csv, opened_run):
    result = audit(opened_run, tiny_artifact.path, template_csv, "--score", "mismatch", "--budget", "0.25", "--control", "0")
    assert result.returncode == 0, result.stderr
    run_id = rows(opened_run, "SELECT max(id) FROM audit_runs")[0][0]
    for t in list_tasks(open_store(str(opened_run)), run_id=run_id):  # 1 - P(count == record) under the stored probabilities
        assert t["score"] == pytest.approx(1 - t["probabilities"][str(min(t["record_qty"], 6)) if t["record_qty"] <= 5 else "6+"], abs=1e-3)


def test_a_distance_run_ranks_by_the_expected_items_between_record_and_count(tiny_artifact, template_csv, opened_run):
    from bintally.audit.scoring import expected_distance

    result = audit(opened_run, tiny_artifact.path, template_csv, "--score", "distance", "--budget", "0.25", "--control", "0")
    assert result.returncode == 0, result.stderr
    run_id = rows(opened_run, "SELECT max(id) FROM audit_runs")[0][0]
    tasks = list_tasks(open_store(str(opened_run)), run_id=run_id)
    space = LabelSpace.from_names(list(tasks[0]["probabilities"]))
    scores = {}
    for snapshot_id, record, probabilities in rows(opened_run, f"SELECT s.id, s.record_qty, c.probabilities FROM scores c "
                                                               f"JOIN snapshots s ON s.id = c.snapshot_id WHERE c.run_id = {run_id}"):
        probs = np.array([list(json.loads(probabilities).values())])
        scores[snapshot_id] = float(expected_distance(space, probs, [record])[0])
    top = sorted(scores.values(), reverse=True)[:4]
    assert [t["score"] for t in tasks] == pytest.approx(top, abs=1e-3) and len(tasks) == 4
    assert all(0 <= t["p_record"] <= 1 for t in tasks)


def test_count_recount_review_and_labels_that_data_index_reads(tmp_path, opened_run):
    store = open_store(str(opened_run))
    first, second = list_tasks(store)[:2]
    same = run_cli("audit", "count", first["id"], "--qty", first["record_qty"], "--by", "ann", "--db", opened_run)
    assert same.returncode == 0 and "waits for a review" in same.stdout
    wrong = first["record_qty"] + 2
    differs = run_cli("audit", "count", second["id"], "--qty", wrong, "--by", "ann", "--db", opened_run)
    assert differs.returncode == 0 and "recount is requested" in differs.stdout
    assert list_tasks(store, status="recount_requested")[0]["id"] == second["id"]
    not_said = run_cli("audit", "count", second["id"], "--qty", wrong, "--by", "cy", "--db", opened_run)
    assert_one_line_error(not_said, "waits for its recount", "--recount")
    recount = run_cli("audit", "count", second["id"], "--qty", wrong, "--by", "cy", "--recount", "--db", opened_run)
    assert recount.returncode == 0 and "recount of" in recount.stdout
    assert rows(opened_run, f"SELECT count_index, counted_qty, counted_by FROM count_observations WHERE task_id = {second['id']} "
                            "ORDER BY count_index") == [(0, wrong, "ann"), (1, wrong, "cy")]
    no_reason = run_cli("audit", "review", second["id"], "--approve", "--final", wrong, "--by", "bo", "--db", opened_run)
    assert_one_line_error(no_reason, "give a reason")
    for task, final, extra in ((first, first["record_qty"], []), (second, wrong, ["--reason", "misplaced"])):
        reviewed = run_cli("audit", "review", task["id"], "--approve", "--final", final, "--by", "bo", "--db", opened_run, *extra)
        assert reviewed.returncode == 0, reviewed.stderr
    resolution = rows(opened_run, f"SELECT decision, final_qty, record_qty, variance, outcome, reason, approved_by FROM resolutions "
                                  f"WHERE task_id = {second['id']}")
    assert resolution == [("approved", wrong, second["record_qty"], 2, "record_wrong", "misplaced", "bo")]
    summary = run_cli("audit", "list", "--runs", "--db", opened_run)
    assert "counted 2" in summary.stdout and "confirmed errors 1" in summary.stdout

    labels = tmp_path / "labels.csv"
    written = run_cli("audit", "labels", "--out", labels, "--db", opened_run)
    assert written.returncode == 0 and "wrote 2 label(s)" in written.stdout
    manifest = tmp_path / "relabelled.parquet"
    indexed = run_cli("data", "index", labels, "--out", manifest, "--no-progress")
    assert indexed.returncode == 0, indexed.stderr
    counts = dict(zip(pd.read_parquet(manifest)["path"].map(lambda p: Path(p).name), pd.read_parquet(manifest)["count"]))
    assert counts == {Path(first["image"]).name: first["record_qty"], Path(second["image"]).name: wrong}
    assert_one_line_error(run_cli("audit", "labels", "--out", labels, "--db", opened_run), "exists", "--overwrite")

    for fmt in ("csv", "parquet"):
        out = tmp_path / f"run.{fmt}"
        assert run_cli("audit", "export", "--run", 1, "--out", out, "--db", opened_run).returncode == 0
        frame = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
        assert len(frame) == 6
        row = frame.set_index("task_id").loc[second["id"]]
        assert (row["count_1"], row["count_2"], row["final_qty"], row["outcome"]) == (wrong, wrong, wrong, "record_wrong")


def test_only_approved_resolutions_become_labels(tmp_path, opened_run):
    store = open_store(str(opened_run))
    task = list_tasks(store)[0]
    submit_count(store, task["id"], task["record_qty"], person("ann"))
    review(store, task["id"], approve=False, actor=person("bo"), comment="photo blurred")
    assert run_cli("audit", "labels", "--out", tmp_path / "l.csv", "--db", opened_run).stdout.startswith("wrote 0 label(s)")
    assert (tmp_path / "l.csv").read_text() == "path,count\n"


def test_tasks_are_assigned_and_listed_per_person_until_they_close(opened_run):
    store = open_store(str(opened_run))
    first, second = list_tasks(store)[:2]
    assigned = run_cli("audit", "assign", first["id"], "--to", "ann", "--db", opened_run)
    assert assigned.returncode == 0 and "assigned to ann" in assigned.stdout
    mine = run_cli("audit", "list", "--assignee", "ann", "--db", opened_run)
    assert [line.split()[0] for line in mine.stdout.splitlines()[1:]] == [str(first["id"])]
    assert run_cli("audit", "assign", first["id"], "--nobody", "--db", opened_run).returncode == 0
    assert list_tasks(store, assignee="ann") == []
    assert_one_line_error(run_cli("audit", "assign", first["id"], "--db", opened_run), "--to or --nobody")
    submit_count(store, second["id"], second["record_qty"], person("bo"))
    review(store, second["id"], approve=True, actor=person("cy"), final=second["record_qty"])
    assert_one_line_error(run_cli("audit", "assign", second["id"], "--to", "ann", "--db", opened_run), "closed task")


def test_the_counter_view_is_blind(opened_run):
    store = open_store(str(opened_run))
    task = list_tasks(store)[0]
    submit_count(store, task["id"], task["record_qty"] + 1, person("ann"))
    view = json.loads(run_cli("audit", "show", task["id"], "--blind", "--db", opened_run).stdout)
    assert view["status"] == "recount_requested" and view["count_index"] == 1
    assert not {"record_qty", "predicted", "expected", "score", "p_record", "probabilities", "counts"} & set(view)
    full = json.loads(run_cli("audit", "show", task["id"], "--db", opened_run).stdout)
    assert full["record_qty"] == task["record_qty"] and full["counts"][0]["qty"] == task["record_qty"] + 1


def test_wrong_transitions_are_refused_and_change_nothing(opened_run):
    store = open_store(str(opened_run))
    task = list_tasks(store)[0]["id"]
    with pytest.raises(Conflict, match="only a task in_review"):
        review(store, task, approve=True, actor=person("bo"), final=1)
    submit_count(store, task, list_tasks(store)[0]["record_qty"], person("ann"))
    with pytest.raises(Conflict, match="waits for a review"):
        submit_count(store, task, 3, person("cy"))
    with pytest.raises(ConfigError, match="needs the final quantity"):
        review(store, task, approve=True, actor=person("bo"))
    review(store, task, approve=True, actor=person("bo"), final=list_tasks(store)[0]["record_qty"])
    before = table_sizes(opened_run)
    closed = run_cli("audit", "count", task, "--qty", 2, "--by", "cy", "--db", opened_run)
    assert_one_line_error(closed, f"task {task} is approved", "closed")
    again = run_cli("audit", "review", task, "--reject", "--by", "cy", "--db", opened_run)
    assert_one_line_error(again, "only a task in_review")
    with pytest.raises(NotFound):
        submit_count(store, 999, 1, person("ann"))
    assert table_sizes(opened_run) == before


def test_two_counts_at_once_give_one_success_and_one_conflict(opened_run):
    store = open_store(str(opened_run))
    for task in list_tasks(store)[:3]:
        barrier, outcomes = threading.Barrier(2), []

        def count(who: str, task_id=task["id"], barrier=barrier, outcomes=outcomes):
            barrier.wait()
            try:
                outcomes.append(submit_count(store, task_id, 1, person(who)).status)
            except Conflict as e:
                outcomes.append(f"conflict: {e}")

        threads = [threading.Thread(target=count, args=(who,)) for who in ("ann", "bo")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(o.startswith("conflict") for o in outcomes) == 1, outcomes
        assert rows(opened_run, f"SELECT count(*) FROM count_observations WHERE task_id = {task['id']}") == [(1,)]


def test_a_retried_count_with_the_same_idempotency_key_is_recorded_once(opened_run):
    store = open_store(str(opened_run))
    task = list_tasks(store)[0]["id"]
    first = submit_count(store, task, 7, person("ann"), idempotency_key="k-1")
    replay = submit_count(store, task, 7, person("ann"), idempotency_key="k-1")
    assert replay.replayed and (replay.task_id, replay.count_index, replay.status) == (first.task_id, first.count_index, first.status)
    with pytest.raises(Conflict, match="already used"):
        submit_count(store, task, 8, person("ann"), idempotency_key="k-1")
    assert rows(opened_run, f"SELECT count(*) FROM count_observations WHERE task_id = {task}") == [(1,)]


def test_a_bucket_folder_is_audited_with_its_expected_quantities(tmp_path, tiny_artifact, small_bucket):
    db = tmp_path / "a.db"
    result = audit(db, tiny_artifact.path, small_bucket, "--budget", "0.1")
    assert result.returncode == 0, result.stderr
    snapshots = dict(rows(db, "SELECT bin_id, record_qty FROM snapshots"))
    assert len(snapshots) == 30
    for bin_id, record in snapshots.items():
        assert record == json.loads((small_bucket / "metadata" / f"{bin_id}.json").read_text())["EXPECTED_QUANTITY"]


@pytest.mark.parametrize("how", ["SIGTERM to the group", "kill -9"])
def test_a_stopped_run_resumes_where_it_stopped_and_scores_each_bin_once(tmp_path, tiny_artifact, bins_csv, how):
    import os

    db = tmp_path / "a.db"
    command = [sys.executable, "-m", "bintally", "audit", "run", "--model", str(tiny_artifact.path), "--data", str(bins_csv),
               "--db", str(db), "--backend", "torch", "--batch-size", "1", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and rows_or_zero(db) < 3:
        time.sleep(0.05)
    if how == "kill -9":
        process.kill()
    else:
        os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    if how != "kill -9":
        assert process.returncode == 130
        assert stderr.strip().splitlines()[-1].startswith("stopped; the bins scored so far are kept"), stderr
    scored = rows_or_zero(db)
    assert 3 <= scored < 16, "the run finished before it could be stopped"
    assert rows(db, "SELECT status FROM audit_runs") == [("scoring",)] and rows(db, "SELECT count(*) FROM tasks") == [(0,)]
    resumed = audit(db, tiny_artifact.path, bins_csv)
    assert resumed.returncode == 0, resumed.stderr
    assert f"scored {16 - scored} of 16" in resumed.stdout
    assert rows(db, "SELECT count(*), count(DISTINCT snapshot_id) FROM scores") == [(16, 16)]
    assert rows(db, "SELECT status FROM audit_runs") == [("open",)]


def rows_or_zero(db: Path) -> int:
    try:
        return rows(db, "SELECT count(*) FROM scores")[0][0]
    except sqlite3.OperationalError:  # not created yet
        return 0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("content, fragments", [
    ("bin_id,image\nb1,a.jpg\n", ["missing record_qty"]),
    ("bin,image,record_qty\nb1,a.jpg,1\n", ["missing bin_id"]),
    ("bin_id,image,record_qty\nb1,photos/x.jpg,two\n", [":2", "record_qty 'two' is not a whole number"]),
    ("bin_id,image,record_qty\nb1,photos/x.jpg,1\nb2,photos/y.jpg,-1\n", [":3", "below 0"]),
    ("bin_id,image,record_qty\nb1,photos/x.jpg,1.5\n", ["not a whole number"]),
    ("bin_id,image,record_qty,captured_at\nb1,photos/x.jpg,1,yesterday\n", ["captured_at 'yesterday'"]),
    ("bin_id,image,record_qty\nb1,ftp://h/x.jpg,1\n", ["unsupported URI scheme"]),
    ("bin_id,image,record_qty\n,photos/x.jpg,1\n", ["empty bin_id"]),
    ("", ["missing bin_id,image,record_qty"]),
])
def test_a_bad_csv_is_refused_in_one_line_and_records_nothing(tmp_path, tiny_artifact, opened_run, content, fragments):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    before = table_sizes(opened_run)
    result = audit(opened_run, tiny_artifact.path, bad)
    assert_one_line_error(result, str(bad), *fragments)
    assert table_sizes(opened_run) == before


def test_unreadable_photos_are_reported_and_skipped(tmp_path, tiny_artifact, bins_csv):
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with open(bins_csv, "a") as f:
        f.write("bin-broken,photos/broken.jpg,2\nbin-missing,photos/nowhere.jpg,1\n")
    db = tmp_path / "a.db"
    result = audit(db, tiny_artifact.path, bins_csv)
    assert result.returncode == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2 and any("broken.jpg" in s for s in skipped) and any("nowhere.jpg" in s for s in skipped)
    assert "scored 16 of 18 bin(s), 2 unreadable photo(s) skipped" in result.stdout
    assert rows(db, "SELECT count(*) FROM scores WHERE problem IS NOT NULL") == [(2,)]
    assert rows(db, "SELECT count(*) FROM tasks t JOIN snapshots s ON s.id = t.snapshot_id WHERE s.bin_id LIKE 'bin-%o%n%'") == [(0,)]


@pytest.mark.parametrize("args, fragments", [
    (["audit", "count", "999", "--qty", "1", "--by", "ann"], ["no task 999"]),
    (["audit", "count", "1", "--qty", "-1", "--by", "ann"], ["--qty"]),
    (["audit", "count", "0", "--qty", "1", "--by", "ann"], ["not a task id"]),
    (["audit", "count", "1", "--qty", "1", "--by", " "], ["--by"]),
    (["audit", "list", "--run", "42"], ["no audit run 42"]),
    (["audit", "export", "--run", "42", "--out", "{tmp}/x.csv"], ["no audit run 42"]),
    (["audit", "export", "--run", "1", "--out", "{tmp}/x.txt"], ["x.txt"]),
    (["audit", "review", "1", "--by", "bo"], ["--approve or --reject"]),
    (["audit", "review", "1", "--approve", "--final", "1", "--reason", "stolen", "--by", "bo"], ["--reason"]),
])
def test_bad_commands_are_one_line_errors_and_change_nothing(tmp_path, opened_run, args, fragments):
    before = table_sizes(opened_run)
    result = run_cli(*[a.format(tmp=tmp_path) for a in args], "--db", opened_run)
    assert_one_line_error(result, *fragments)
    assert table_sizes(opened_run) == before


@pytest.mark.parametrize("options, fragments", [
    (["--budget", "0.1", "--threshold", "0.5"], ["budget and threshold cannot be given together", "--budget", "--threshold"]),
    (["--budget", "1.5"], ["budget must be a share", "1.5"]),
    (["--control", "1"], ["control must be a share", "1.0"]),
    (["--threshold", "2"], ["threshold must be a score", "2.0"]),
    (["--score", "distance", "--threshold", "-1"], ["threshold must be a distance", "-1.0"]),
    (["--score", "entropy"], ["--score", "entropy"]),
])
def test_bad_run_settings_are_refused_before_any_work(tmp_path, tiny_artifact, bins_csv, options, fragments):
    db = tmp_path / "a.db"
    assert_one_line_error(audit(db, tiny_artifact.path, bins_csv, *options), *fragments)
    assert not db.exists()


def test_a_run_name_taken_by_other_settings_is_never_overwritten(tiny_artifact, template_csv, opened_run):
    name = rows(opened_run, "SELECT name FROM audit_runs")[0][0]
    before = table_sizes(opened_run)
    clash = audit(opened_run, tiny_artifact.path, template_csv, "--budget", "0.5", "--name", name)
    assert_one_line_error(clash, name, "other settings", "budget 0.25 here 0.5", "never overwritten")
    assert table_sizes(opened_run) == before


@pytest.mark.parametrize("db, fragments", [
    ("{tmp}/no/such/folder/a.db", ["no audit database at", "no/such/folder/a.db", "run `bintally audit run` first"]),
    ("bogus://nowhere/db", ["cannot open the audit database bogus://nowhere/db"]),
    ("postgresql+psycopg://u:secret@127.0.0.1:1/db", ["cannot open the audit database", "u:***@127.0.0.1:1"]),
    ("{tmp}/not-a-db.db", ["cannot open the audit database", "not-a-db.db"]),
])
def test_a_database_that_cannot_be_opened_is_one_line(tmp_path, db, fragments):
    (tmp_path / "not-a-db.db").write_text("this is a text file, not SQLite " * 100)
    result = run_cli("audit", "list", "--db", db.format(tmp=tmp_path))
    line = assert_one_line_error(result, *fragments)
    assert "secret" not in line
    assert (tmp_path / "not-a-db.db").read_text().startswith("this is a text file")


def test_a_schema_from_a_newer_bintally_is_refused_and_left_alone(opened_run):
    with sqlite3.connect(opened_run) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999_future'")
    before = table_sizes(opened_run)
    result = run_cli("audit", "list", "--db", opened_run)
    assert_one_line_error(result, "schema revision 9999_future", "newer", "upgrade bintally")
    assert table_sizes(opened_run) == before
    assert rows(opened_run, "SELECT version_num FROM alembic_version") == [("9999_future",)]


def test_a_damaged_store_is_one_line_and_names_the_database(opened_run):
    with sqlite3.connect(opened_run) as connection:
        connection.execute("DROP TABLE count_observations")
    result = run_cli("audit", "count", "1", "--qty", "1", "--by", "ann", "--db", opened_run)
    assert_one_line_error(result, f"the audit database sqlite:///{opened_run} failed", "count_observations")
    assert rows(opened_run, "SELECT status FROM tasks WHERE id = 1") == [("requested",)]
