"""Issue 19, classes 3 and 9: contradictory options are refused, never resolved quietly; text and numbers are refused,
never normalised quietly. Every case runs through the real command line (in process) and, where a source file is
involved, on real sample photos; nothing is written when a command is refused."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from bintally.audit.snapshots import read_source
from bintally.errors import ConfigError, DataError
from bintally.paths import SAMPLE_DIR
from tests.cli_helpers import assert_one_line_error, run_cli

PHOTO = SAMPLE_DIR / "bin-images" / "00450.jpg"
OTHER = SAMPLE_DIR / "bin-images" / "00451.jpg"


# ---------------------------------------------------------------- class 3: options that contradict each other

CONTRADICTIONS = [
    (["audit", "review", "1", "--approve", "--reject", "--by", "bo"], ["--approve and --reject", "cannot be given together"]),
    (["audit", "review", "1", "--reject", "--approve", "--by", "bo"], ["--approve and --reject"]),
    (["audit", "review", "1", "--reject", "--final", "3", "--by", "bo"], ["--reject and --final"]),
    (["audit", "review", "1", "--reject", "--final-line", "A=1", "--by", "bo"], ["--reject and --final-line"]),
    (["audit", "review", "1", "--reject", "--reason", "lost", "--by", "bo"], ["--reject and --reason"]),
    (["audit", "review", "1", "--by", "bo"], ["give --approve or --reject"]),
    (["audit", "assign", "1", "--to", "ann", "--nobody"], ["--to and --nobody"]),
    (["audit", "assign", "1"], ["give --to or --nobody"]),
    (["audit", "list", "--runs", "--status", "approved"], ["--runs and --status"]),
    (["audit", "list", "--runs", "--run", "1"], ["--runs and --run"]),
    (["audit", "list", "--runs", "--assignee", "ann"], ["--runs and --assignee"]),
    (["audit", "list", "--runs", "--limit", "3"], ["--runs and --limit"]),
    (["audit", "count", "1", "--by", "ann", "--qty", "3", "--qty", "5"], ["--qty given twice", "'3' and '5'"]),
    (["audit", "count", "1", "--by", "ann", "--by", "bob", "--qty", "3"], ["--by given twice"]),
    (["audit", "count", "1", "--by", "ann", "--found", "X=1"], ["--found", "--line"]),
    (["audit", "export", "--run", "1", "--out", "{tmp}/x.csv", "--format", "parquet"], ["--format parquet contradicts", ".csv"]),
    (["audit", "run", "--model", "m", "--data", "d", "--budget", "0.1", "--threshold", "0.5"],
     ["budget and threshold cannot be given together", "--budget", "--threshold"]),
    (["audit", "run", "--model", "m", "--data", "d", "--progress", "--no-progress"], ["--progress and --no-progress contradict"]),
    (["audit", "run", "--model", "m", "--data", "d", "--lines", "use", "--lines", "ignore"], ["--lines given twice"]),
    (["train", "--resume", "{tmp}/run", "--overwrite"], ["--resume and --overwrite"]),
    (["train", "--resume", "{tmp}/run", "--out", "{tmp}/other"], ["--resume and --out"]),
    (["train", "--resume", "{tmp}/run", "--preset", "fast"], ["--resume and --preset"]),
    (["train", "--epochs", "1", "--epochs", "2", "--out", "{tmp}/run"], ["--epochs given twice"]),
    (["evaluate", "--predictions", "{tmp}/p.csv", "--model", "{tmp}/run"], ["--predictions and --model"]),
    (["evaluate", "--predictions", "{tmp}/p.csv", "--data", "{tmp}/m.parquet"], ["--predictions and --data"]),
    (["evaluate", "--predictions", "{tmp}/p.csv", "--save-predictions", "{tmp}/q.csv"], ["--predictions and --save-predictions"]),
    (["data", "fetch", "--ids", "00523", "--id-range", "1-3", "--out", "{tmp}/abid"], ["--ids and --id-range"]),
    (["data", "fetch", "--out", "{tmp}/abid"], ["give one of --ids, --ids-file, --id-range, --file-list"]),
    (["data", "fetch", "--ids", "00523", "--source", "https://a.example", "--bucket", "b", "--out", "{tmp}/abid"],
     ["--source and --bucket"]),
    (["data", "fetch", "--ids", "00523", "--source", "https://a.example", "--endpoint-url", "http://127.0.0.1:9",
      "--out", "{tmp}/abid"], ["--source and --endpoint-url"]),
    (["data", "split", "--seed", "1", "--seed", "2", "--out", "{tmp}/s.parquet"], ["--seed given twice"]),
    (["export", "--model", "{tmp}/run", "--out", "{tmp}/e", "--tta", "--no-tta"], ["--tta and --no-tta contradict"]),
    (["serve", "--model", "{tmp}/run", "--port", "1", "--port", "2"], ["--port given twice"]),
]


@pytest.mark.parametrize("args, fragments", CONTRADICTIONS, ids=[" ".join(a[:2] + a[3:6]) for a, _ in CONTRADICTIONS])
def test_contradictory_options_are_one_line_and_nothing_is_done(tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "audit.db"
    extra = ["--db", db] if args[0] == "audit" else []
    before = sorted(tmp_path.iterdir())
    assert_one_line_error(run_cli(*[a.format(tmp=tmp_path) for a in args], *extra), *fragments)
    assert sorted(tmp_path.iterdir()) == before  # no store, run, export or download started


def test_the_same_option_twice_with_the_same_value_is_one_option(tmp_path):
    result = run_cli("audit", "list", "--json", "--json", "--db", tmp_path / "missing.db")
    assert "given twice" not in result.stderr and "contradict" not in result.stderr


def test_settings_refuse_a_contradiction_without_the_command_line():
    from bintally.audit import AuditConfig

    with pytest.raises(ConfigError, match="budget and threshold cannot be given together"):
        AuditConfig(model="m", data="d", budget=0.2, threshold=0.5).validate()
    assert AuditConfig(model="m", data="d", threshold=0.5).validate().budget is None


# ---------------------------------------------------------------- class 9: text on the command line


@pytest.mark.parametrize("args, fragments", [
    (["audit", "count", "1", "--qty", "3", "--by", ""], ["empty argument '' after --by", "--by is empty", "give a value"]),
    (["audit", "count", "1", "--qty", "3", "--by="], ["in --by=", "--by is empty"]),
    (["audit", "count", "1", "--qty", "3", "--by", "   "], ["--by is empty"]),
    (["audit", "assign", "1", "--to", ""], ["--to is empty"]),
    (["audit", "list", "--assignee", ""], ["--assignee is empty"]),
    (["audit", "run", "--model", "m", "--data", "d", "--name", ""], ["--name is empty"]),
    (["audit", "run", "--model", "m", "--data", "d", "--by", ""], ["--by is empty"]),
    (["audit", "count", "1", "--qty", "3", "--by", "ann\nbob"], ["--by", "U+000A"]),
    (["audit", "count", "1", "--qty", "3", "--by", "ann\x00"], ["--by", "U+0000"]),
    (["audit", "count", "1", "--qty", "3", "--by", "ann", "--comment", "ok\x1b[2J"], ["--comment", "U+001B"]),
    (["audit", "review", "1", "--reject", "--by", "bo", "--comment", "no\u2028more"], ["--comment", "U+2028"]),
    (["audit", "assign", "1", "--to", "ann\rbob"], ["--to", "U+000D"]),
    (["audit", "count", "1", "--by", "ann", "--line", "SKU\x07=1"], ["--line", "U+0007"]),
    (["audit", "run", "--model", "m", "--data", "d", "--name", "run\x85"], ["--name", "U+0085"]),
    (["audit", "count", "1", "--by", "ann", "--line", "A=1_000"], ["--line", "'1_000' is not a whole number"]),
    (["audit", "count", "1", "--by", "ann", "--line", "A=\uff13"], ["--line", "is not a whole number"]),
    (["audit", "count", "1", "--by", "ann", "--line", "A=\u0661\u0662"], ["--line", "is not a whole number"]),
    (["audit", "review", "1", "--approve", "--by", "bo", "--final-line", "A=1.0"], ["--final-line", "is not a whole number"]),
])
def test_bad_text_on_the_command_line_is_one_line(tmp_path, args, fragments):
    db = tmp_path / "audit.db"
    assert_one_line_error(run_cli(*args, "--db", db), *fragments)
    assert not db.exists()


def test_a_multi_line_comment_is_kept_as_given(tmp_path):
    """Comments may hold line breaks (they are notes); the refusal above is for other control characters only."""
    from bintally.audit import open_store

    open_store(tmp_path / "a.db").close()  # an empty store: the count gets past the option checks to the missing task
    result = run_cli("audit", "count", "1", "--qty", "3", "--by", "ann", "--comment", "first\nsecond", "--db", tmp_path / "a.db")
    assert "control character" not in result.stderr and "comment" not in result.stderr
    assert "task 1" in result.stderr, result.stderr


# ---------------------------------------------------------------- class 9: numbers on the command line


@pytest.mark.parametrize("args, fragments", [
    (["audit", "run", "--tolerance", "99999999999999999999999"], ["--tolerance"]),
    (["audit", "run", "--tolerance", "1000001"], ["--tolerance", "1000000"]),
    (["audit", "run", "--seed", "99999999999999999999"], ["--seed"]),
    (["audit", "run", "--batch-size", "100000"], ["--batch-size"]),
    (["audit", "run", "--budget", "nan"], ["--budget", "nan is not a finite number"]),
    (["audit", "run", "--threshold", "inf"], ["--threshold", "inf is not a finite number"]),
    (["audit", "run", "--control", "-inf"], ["--control", "-inf is not a finite number"]),
])
def test_huge_and_non_finite_numbers_of_audit_run_are_refused(tmp_path, args, fragments):
    db = tmp_path / "a.db"
    assert_one_line_error(run_cli(*args[:2], "--model", "m", "--data", "d", *args[2:], "--db", db), *fragments)
    assert not db.exists()


@pytest.mark.parametrize("args, fragments", [
    (["audit", "count", "99999999999999999999", "--qty", "1", "--by", "ann"], ["TASK", "too large"]),
    (["audit", "count", "1", "--qty", "99999999999999999999", "--by", "ann"], ["--qty", "too large"]),
    (["audit", "review", "1", "--approve", "--final", "99999999999999999999", "--by", "bo"], ["--final", "too large"]),
    (["audit", "list", "--run", "99999999999999999999"], ["--run", "too large"]),
    (["serve", "--model", "m", "--max-body-mb", "nan"], ["--max-body-mb", "not a finite number"]),
    (["serve", "--model", "m", "--max-body-mb", "inf"], ["--max-body-mb", "not a finite number"]),
    (["serve", "--model", "m", "--shutdown-delay", "inf"], ["--shutdown-delay", "not a finite number"]),
    (["train", "--lr", "nan"], ["--lr", "not a finite number"]),
])
def test_huge_and_non_finite_numbers_of_other_commands_are_refused(tmp_path, args, fragments):
    db = ["--db", tmp_path / "a.db"] if args[0] == "audit" else ["--out", tmp_path / "run"] if args[0] == "train" else []
    assert_one_line_error(run_cli(*args, *db), *fragments)
    assert list(tmp_path.iterdir()) == []


def test_every_whole_number_setting_fits_a_64_bit_integer():
    from bintally.settings import MAX_WHOLE
    from bintally.training.config import TrainConfig

    with pytest.raises(ConfigError, match="too large"):
        TrainConfig(max_steps=MAX_WHOLE + 1)


# ---------------------------------------------------------------- class 9: records in every source


def totals_csv(tmp_path: Path, rows: str) -> Path:
    shutil.copy(PHOTO, tmp_path / "a.jpg")
    shutil.copy(OTHER, tmp_path / "b.jpg")
    path = tmp_path / "bins.csv"
    path.write_bytes(rows.encode())
    return path


@pytest.mark.parametrize("rows, fragments", [
    ('bin_id,image,record_qty\n"bin\n1",a.jpg,3\n', [":2", "bin_id", "U+000A"]),
    ('bin_id,image,record_qty\nb1,a.jpg,3\n"bin\n1",a.jpg,3\n', [":3", "bin_id", "U+000A"]),
    ('bin_id,image,record_qty\nb1,a.jpg,3\n"b2",b.jpg,3\n"x\ny",a.jpg,1\n', [":4", "U+000A"]),
    ("bin_id,image,record_qty\nbin\x001,a.jpg,3\n", [":2", "bin_id", "U+0000"]),
    ("bin_id,image,record_qty\nbin\u20281,a.jpg,3\n", [":2", "bin_id", "U+2028"]),
    ("bin_id,image,record_qty\nb1,a\x1b.jpg,3\n", [":2", "image", "U+001B"]),
    ("bin_id,image,record_qty\nb1,a.jpg,1_000\n", [":2", "record_qty '1_000' is not a whole number"]),
    ("bin_id,image,record_qty\nb1,a.jpg,\uff13\n", [":2", "is not a whole number"]),
    ("bin_id,image,record_qty\nb1,a.jpg,\u0661\u0662\n", [":2", "is not a whole number"]),
    ("bin_id,image,record_qty\nb1,a.jpg,3\nb1,b.jpg,3\n", [":3", "bin 'b1' is also at", ":2", "another image"]),
    ("bin_id,image,record_qty\nb1,a.jpg,3\nb1,a.jpg,4\n", [":3", ":2", "record_qty 3 there and 4 here"]),
    ("bin_id,image,record_qty\nb1,a.jpg,3\nb1,a.jpg,3\n", [":3", ":2", "the same record"]),
    ('bin_id,image,sku,qty\nb1,a.jpg,"S\n1",1\n', [":2", "sku", "U+000A"]),
    ("bin_id,image,sku,qty\nb1,a.jpg,S1,1_0\n", [":2", "qty '1_0' is not a whole number"]),
    ("bin_id,image,sku,qty\nb1,a.jpg,S1,\uff12\n", [":2", "is not a whole number"]),
    ("bin_id,image,sku,qty\nb1,a.jpg,S1,1\nb1,b.jpg,S1,1\n", [":3", "bin 'b1' is also at", ":2", "another image"]),
    ("bin_id,image,sku,qty\nb1,a.jpg," + "S" * 201 + ",1\n", [":2", "sku is longer than 200"]),
])
def test_a_csv_source_refuses_what_it_would_normalise(tmp_path, tiny_artifact, rows, fragments):
    csv_path = totals_csv(tmp_path, rows)
    db = tmp_path / "audit.db"
    result = run_cli("audit", "run", "--model", tiny_artifact.path, "--data", csv_path, "--db", db, "--backend", "torch",
                     "--no-progress")
    assert_one_line_error(result, str(csv_path), *fragments)
    assert not db.exists() or sqlite3.connect(db).execute("SELECT count(*) FROM snapshots").fetchone() == (0,)


def test_a_decimal_zero_quantity_from_a_spreadsheet_is_still_a_whole_number(tmp_path):
    csv_path = totals_csv(tmp_path, "bin_id,image,sku,qty\nb1,a.jpg,S1,2.0\nb2,b.jpg,S2,3\n")
    assert [(s.bin_id, s.record_qty) for s in read_source(csv_path)] == [("b1", 2), ("b2", 3)]


def records(tmp_path: Path, bins: list) -> Path:
    shutil.copy(PHOTO, tmp_path / "a.jpg")
    shutil.copy(OTHER, tmp_path / "b.jpg")
    path = tmp_path / "records.json"
    path.write_text(json.dumps({"bins": bins}))
    return path


@pytest.mark.parametrize("bins, fragments", [
    ([{"bin_id": "bin\n1", "image": "a.jpg", "record_qty": 1}], ["bins[0]", "bin_id", "U+000A"]),
    ([{"bin_id": "bin1\n", "image": "a.jpg", "record_qty": 1}], ["bins[0]", "bin_id", "U+000A"]),
    ([{"bin_id": "b1", "image": "a.jpg\t", "record_qty": 1}], ["bins[0]", "image", "U+0009"]),
    ([{"bin_id": "b1", "image": "a.jpg", "lines": [{"sku": "S\u0000", "qty": 1}]}], ["lines[0]", "sku", "U+0000"]),
    ([{"bin_id": "b1", "image": "a.jpg", "lines": [{"sku": "S1", "qty": "1_0"}]}], ["lines[0]", "not a whole number"]),
    ([{"bin_id": "b1", "image": "a.jpg", "record_qty": 1}, {"bin_id": "b1", "image": "b.jpg", "record_qty": 1}],
     ["bins[1]", "also at", "bins[0]", "another image"]),
    ([{"bin_id": "b1", "image": "a.jpg", "record_qty": 1}, {"bin_id": "b1", "image": "a.jpg", "record_qty": 2}],
     ["bins[1]", "also at", "bins[0]", "record_qty 1 there and 2 here"]),
    ([{"bin_id": "b1", "image": "a.jpg", "lines": [{"sku": "S1", "qty": 1}]},
      {"bin_id": "b1", "image": "a.jpg", "lines": [{"sku": "S2", "qty": 1}]}], ["bins[1]", "bins[0]", "other SKU lines"]),
])
def test_a_json_records_file_refuses_what_it_would_normalise(tmp_path, bins, fragments):
    with pytest.raises(DataError) as refused:
        read_source(records(tmp_path, bins))
    message = str(refused.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_the_same_bin_at_two_times_is_two_snapshots(tmp_path):
    path = records(tmp_path, [{"bin_id": "b1", "image": "a.jpg", "record_qty": 1, "captured_at": "2026-01-01T00:00:00Z"},
                              {"bin_id": "b1", "image": "b.jpg", "record_qty": 2, "captured_at": "2026-01-02T00:00:00Z"}])
    assert [s.record_qty for s in read_source(path)] == [1, 2]


def bucket(tmp_path: Path, stem: str = "00450") -> Path:
    root = tmp_path / "bucket"
    (root / "bin-images").mkdir(parents=True)
    (root / "metadata").mkdir()
    shutil.copy(SAMPLE_DIR / "bin-images" / f"{stem}.jpg", root / "bin-images" / f"{stem}.jpg")
    shutil.copy(SAMPLE_DIR / "metadata" / f"{stem}.json", root / "metadata" / f"{stem}.json")
    return root


def edit_metadata(root: Path, stem: str, change) -> None:
    path = root / "metadata" / f"{stem}.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_a_bucket_sku_with_a_newline_is_refused_naming_the_metadata_file(tmp_path):
    root = bucket(tmp_path)

    def newline_in_asin(doc):
        first = next(iter(doc["BIN_FCSKU_DATA"].values()))
        first["asin"] = first["asin"] + "\n"
    edit_metadata(root, "00450", newline_in_asin)
    with pytest.raises(DataError, match=r"00450\.json.*SKU.*U\+000A"):
        read_source(root)


@pytest.mark.parametrize("value", ["1_0", "\uff13", "\u0663"])
def test_a_bucket_quantity_in_other_digits_is_refused(tmp_path, value):
    root = bucket(tmp_path)
    edit_metadata(root, "00450", lambda doc: doc.update(EXPECTED_QUANTITY=value))
    with pytest.raises(DataError, match=r"00450\.json.*not an integer"):
        read_source(root, lines="ignore")


def test_a_bucket_with_one_bin_photographed_twice_under_one_name_is_refused(tmp_path):
    root = bucket(tmp_path)
    shutil.copy(SAMPLE_DIR / "bin-images" / "00451.jpg", root / "bin-images" / "00450.jpeg")
    with pytest.raises(DataError, match=r"bin '00450' is also at .*00450\.j.*another image"):
        read_source(root)


def test_a_bucket_photo_named_with_a_control_character_is_refused(tmp_path):
    root = bucket(tmp_path)
    shutil.copy(PHOTO, root / "bin-images" / "bin\n2.jpg")
    with pytest.raises(DataError, match=r"U\+000A"):
        read_source(root)
