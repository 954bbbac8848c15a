"""Every CSV the project writes is safe to open in a spreadsheet (OWASP "CSV Injection"): a text cell that starts like a
formula (= + - @, tab, CR, LF, NUL, their full-width forms, or any of them after spaces) gets a leading ', numbers stay
numbers, and the CSVs the project reads back (labels, predictions) give back the text that was written.

Hostile text goes in through the real commands and routes (bin ids, counters' and reviewers' names, reasons, photo
names) and every cell of every written file is checked; one structure test keeps every CSV writer in bintally/io.py.
"""

from __future__ import annotations

import ast
import csv
import io
import shutil
from pathlib import Path

import httpx
import pandas as pd
import pytest
from pandas.api.types import is_numeric_dtype

from bintally.io import FORMULA_STARTS, csv_text, formula_like, spreadsheet_original, spreadsheet_safe, write_csv
from bintally.paths import SAMPLE_DIR
from tests.cli_helpers import run_cli
from tests.people_helpers import person
from tests.servers import API_KEY, AUTH

PACKAGE = Path(__file__).resolve().parents[1] / "bintally"
PHOTOS = sorted((SAMPLE_DIR / "bin-images").glob("*.jpg"))
HOSTILE_BINS = ['=HYPERLINK("http://evil.example","x")', "+1+cmd|' /C calc'!A0", "@SUM(A1:A9)", "-2+3", "\uff1d1+1", "\uff20x",
                "-3", "bin-ok"]  # "-3" is a number to a spreadsheet, never a formula: written as it is
HOSTILE_NAMES = ["=ann", "+bo", "@cy", "-dee", "\uff0bed", "\uff0dfay", "=gus", "@hal"]


def written(value: str) -> str:
    """What a spreadsheet-safe CSV holds for the text `value`."""
    return value if value == "-3" or value == "bin-ok" else "'" + value


def raw_text(path: Path) -> str:
    with open(path, newline="", encoding="utf-8") as f:  # a CR inside a cell stays a CR
        return f.read()


def assert_every_cell_safe(text: str) -> list[dict]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    unsafe = [(i + 1, cell) for i, row in enumerate(rows) for cell in row if formula_like(cell)]
    assert not unsafe, f"cells a spreadsheet would run: {unsafe}"
    return list(csv.DictReader(io.StringIO(text, newline="")))


def assert_numeric(path: Path, columns: list[str]) -> pd.DataFrame:
    frame = pd.read_csv(path)
    assert all(is_numeric_dtype(frame[c]) for c in columns), frame.dtypes
    return frame


# ---------------------------------------------------------------- the rule


@pytest.mark.parametrize("start", list(FORMULA_STARTS))
def test_each_formula_start_gets_a_quote_and_comes_back(start):
    for text in (f"{start}cmd", f"  {start}=cmd", f"'{start}cmd", f"''{start}cmd"):
        safe = spreadsheet_safe(text)
        assert safe == "'" + text and not formula_like(safe) and spreadsheet_original(safe) == text


def test_numbers_and_ordinary_text_are_written_as_they_are():
    for value in (-3, 2.5, -0.25, None, True, "-3", "+1.5", "-1e5", " -3 ", ".5", "bin-7", "'quoted", "''", "", "a=b", "Zürich"):
        assert spreadsheet_safe(value) == value and spreadsheet_original(value) == value
    for text in ("-3+1", "-1e5x", "+-3", "--3", "-", "=", "\t", "@", "-inf", "-\uff13"):
        assert spreadsheet_safe(text) == "'" + text, text  # not a plain ASCII number: could be a formula


def test_csv_text_neutralises_header_and_cells_and_keeps_numbers():
    text = csv_text([{"a": "=x", "b": -3, "c": "@y"}, {"a": "ok", "b": 4.5, "c": "x\r=cmd"}], ["a", "b", "c"])
    assert text == "a,b,c\r\n'=x,-3,'@y\r\nok,4.5,\"x\r=cmd\"\r\n"  # a CR inside a cell is quoted: it starts no row


# ---------------------------------------------------------------- the structure: one home for writing CSV


def csv_writer_calls(path: Path) -> list[str]:
    """`.to_csv(`, csv.writer / csv.DictWriter (however imported), pyarrow's CSV writer: each with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ("to_csv", "write_csv") and not (
                isinstance(node.value, ast.Name) and node.value.id in ("io", "bintally_io")):
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Attribute) and node.attr in ("writer", "DictWriter") and isinstance(node.value, ast.Name) \
                and node.value.id == "csv":
            found.append(f"{node.lineno}: csv.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in ("csv", "pyarrow.csv", "pyarrow") and any(
                alias.name in ("writer", "DictWriter", "write_csv", "CSVWriter", "csv") for alias in node.names):
            found.append(f"{node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
    return found


def test_every_csv_is_written_by_bintally_io():
    calls = {str(path.relative_to(PACKAGE.parent)): csv_writer_calls(path) for path in sorted(PACKAGE.rglob("*.py"))
             if path != PACKAGE / "io.py"}
    outside = {name: found for name, found in calls.items() if found}
    assert not outside, f"write CSV with bintally.io (write_csv, write_frame_csv, csv_text), not: {outside}"
    assert csv_writer_calls(PACKAGE / "io.py"), "the scan finds no writer even in bintally/io.py: it is broken"


# ---------------------------------------------------------------- the audit: export, labels, line labels, HTTP


@pytest.fixture(scope="module")
def hostile_store(tiny_artifact, tmp_path_factory):
    """An audit store (SQLite) of a run over photos named like formulas in a folder named like one, whose bin ids,
    counters and reviewers are hostile text; every task counted and approved. (db url, folder)"""
    from bintally.audit import list_tasks, open_store, review, submit_count
    from bintally.audit.store import database_url

    folder = tmp_path_factory.mktemp("csv") / "=photos"
    folder.mkdir()
    lines = ["bin_id,image,record_qty"]
    for i, bin_id in enumerate(HOSTILE_BINS):
        shutil.copy(PHOTOS[i], folder / f"{HOSTILE_NAMES[i]}.jpg")
        lines.append(f'"{bin_id.replace(chr(34), chr(34) * 2)}",{HOSTILE_NAMES[i]}.jpg,{i + 1}')
    (folder / "bins.csv").write_text("\n".join(lines) + "\n")
    url = database_url(str(folder.parent / "audit.db"))
    ran = run_cli("audit", "run", "--model", tiny_artifact.path, "--data", folder / "bins.csv", "--db", url, "--budget", "1.0",
                  "--control", "0", "--backend", "torch", "--no-progress")
    assert ran.returncode == 0, ran.stderr
    store = open_store(url)
    try:
        for task in list_tasks(store):
            i = HOSTILE_BINS.index(task["bin_id"])
            submit_count(store, task["id"], task["record_qty"], person(HOSTILE_NAMES[i]), comment="=1+1")
            review(store, task["id"], True, person(HOSTILE_NAMES[-1 - i]), final=task["record_qty"], reason="other", comment="@x")
    finally:
        store.close()
    return url, folder


def test_audit_export_neutralises_every_hostile_cell(hostile_store, tmp_path):
    url, _ = hostile_store
    out = tmp_path / "run.csv"
    assert run_cli("audit", "export", "--run", 1, "--out", out, "--db", url).returncode == 0
    rows = assert_every_cell_safe(raw_text(out))
    assert sorted(r["bin_id"] for r in rows) == sorted(written(b) for b in HOSTILE_BINS)
    for row in rows:
        i = [written(b) for b in HOSTILE_BINS].index(row["bin_id"])
        assert (row["count_1_by"], row["reviewed_by"]) == ("'" + HOSTILE_NAMES[i], "'" + HOSTILE_NAMES[-1 - i])
        assert row["image"].startswith("/") and "/=photos/" in row["image"]
    frame = assert_numeric(out, ["task_id", "run_id", "rank", "record_qty", "score", "p_record", "count_1", "final_qty", "variance"])
    assert sorted(frame["record_qty"]) == list(range(1, len(HOSTILE_BINS) + 1))


def test_labels_are_safe_and_data_index_reads_them_back(hostile_store, tmp_path):
    url, folder = hostile_store
    out = tmp_path / "labels.csv"
    assert run_cli("audit", "labels", "--out", out, "--db", url).returncode == 0
    rows = assert_every_cell_safe(raw_text(out))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(f"{n}.jpg" for n in HOSTILE_NAMES)
    assert_numeric(out, ["count"])
    manifest = tmp_path / "relabelled.parquet"
    indexed = run_cli("data", "index", out, "--out", manifest, "--no-progress")
    assert indexed.returncode == 0, indexed.stderr
    frame = pd.read_parquet(manifest)
    assert sorted(Path(p).name for p in frame["path"]) == sorted(f"{n}.jpg" for n in HOSTILE_NAMES)
    assert set(frame["status"]) == {"ok"}, frame[["path", "status"]]

    line_labels = tmp_path / "lines.csv"
    assert run_cli("audit", "labels", "--lines", "--out", line_labels, "--db", url).returncode == 0
    assert_every_cell_safe(raw_text(line_labels))  # no lined task here: the header alone, still safe


def test_a_relative_path_written_with_a_quote_is_read_back_by_data_index(tmp_path):
    for name in ("=cmd", "@x", "'=quoted"):
        shutil.copy(PHOTOS[0], tmp_path / f"{name}.jpg")
    labels = write_csv(tmp_path / "labels.csv", [{"path": f"{n}.jpg", "count": 2} for n in ("=cmd", "@x", "'=quoted")], ["path", "count"])
    assert labels.read_text().splitlines()[1:] == ["'=cmd.jpg,2", "'@x.jpg,2", "''=quoted.jpg,2"]
    manifest = tmp_path / "m.parquet"
    assert run_cli("data", "index", labels, "--out", manifest, "--no-progress").returncode == 0
    frame = pd.read_parquet(manifest)
    assert sorted(Path(p).name for p in frame["path"]) == ["'=quoted.jpg", "=cmd.jpg", "@x.jpg"]
    assert set(frame["status"]) == {"ok"} and set(frame["count"]) == {2}


def test_the_labels_route_neutralises_every_hostile_cell(hostile_store, serve, tiny_artifact):
    from bintally.audit.store import database_url
    from bintally.serving.config import ServeConfig

    url, folder = hostile_store
    assert url == database_url(str(folder.parent / "audit.db"))
    server = serve(ServeConfig(model=str(tiny_artifact.path), backend="torch", threads=1, api_key=API_KEY,
                               audit_db=str(folder.parent / "audit.db"), audit_auth="open").validate())
    for query in ("", "?lines=1"):
        answer = httpx.get(f"{server.url}/v1/labels/export{query}", headers=AUTH, timeout=30)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
        rows = assert_every_cell_safe(answer.text)
        if not query:
            assert sorted(r["bin_id"] for r in rows) == sorted(written(b) for b in HOSTILE_BINS)
            assert all(r["count"].isdigit() and r["task_id"].isdigit() for r in rows)


# ---------------------------------------------------------------- evaluation: predictions.csv, the report, read back


def test_predictions_and_report_csv_are_safe_and_read_back(tiny_artifact, tmp_path):
    from bintally.evaluation import load_predictions

    names = {"=cmd": 1, "+sum": 2, "@at": 3, "-3": 0, "\uff0dx": 2, "photo": 1}  # photo id -> count (its class folder)
    data = tmp_path / "=data"
    for i, (name, count) in enumerate(names.items()):
        (data / str(count)).mkdir(parents=True, exist_ok=True)
        shutil.copy(PHOTOS[i], data / str(count) / f"{name}.jpg")
    saved, report = tmp_path / "predictions.csv", tmp_path / "report"
    scored = run_cli("evaluate", "--model", tiny_artifact.path, "--data", data, "--backend", "torch", "--save-predictions", saved,
                     "--report", report, "--no-progress")
    assert scored.returncode == 0, scored.stderr
    for path in (saved, report / "predictions.csv"):
        rows = assert_every_cell_safe(raw_text(path))
        assert sorted(r["id"] for r in rows) == sorted(written(n) if n not in ("photo",) else n for n in names)
        assert_numeric(path, ["true_count", "true_label", "predicted_label", "confidence", "expected_count", "prob_0"])
    assert sorted(load_predictions(saved)["id"]) == sorted(names)
    again = run_cli("evaluate", "--predictions", saved, "--json", tmp_path / "m.json")
    assert again.returncode == 0, again.stderr


# ---------------------------------------------------------------- tuning: trials.csv


NOTES = ["=HYPERLINK(\"x\")", "@x", "-3", "\t=cmd", "\r@x", "\n+y", "  =1+1", "ok\r=cmd"]  # the last: a CR inside, quoted


def test_tuning_trials_csv_is_safe(tmp_path):
    import optuna

    from bintally.tuning.config import TuneConfig
    from bintally.tuning.search import summarize

    study = optuna.create_study(study_name="=study")
    for i, text in enumerate(NOTES):
        study.add_trial(optuna.trial.create_trial(params={"lr": 0.001 * (i + 1)}, distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1)},
                                                  value=0.5 + i, user_attrs={"note": text, "wall_time_s": 1.5}))
    tc = TuneConfig(study="=study", out=str(tmp_path / "tune"))
    result = summarize(study, tc, str(SAMPLE_DIR))
    path = Path(result.outputs["trials"])
    rows = assert_every_cell_safe(raw_text(path))
    assert [r["user_attrs_note"] for r in rows] == ["'" + note if formula_like(note) else note for note in NOTES]
    assert_numeric(path, ["number", "value", "params_lr", "user_attrs_wall_time_s"])
