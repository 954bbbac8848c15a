"""Issue 19, variants found after the merge: numbers written otherwise than in ASCII digits on the command line, JSON
that Python's parser resolves quietly (a key twice, NaN, 1e400), and identifiers that look like others (zero-width
characters, a byte order mark, a bin id in decomposed Unicode). Each is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
import sqlite3
import unicodedata
from pathlib import Path

import pytest

from bintally.audit.snapshots import read_source
from bintally.errors import DataError
from bintally.paths import SAMPLE_DIR
from bintally.serving.bodies import parse_json
from bintally.serving.errors import RequestError
from tests.cli_helpers import assert_one_line_error, run_cli

PHOTO = SAMPLE_DIR / "bin-images" / "00450.jpg"
OTHER = SAMPLE_DIR / "bin-images" / "00451.jpg"


@pytest.mark.parametrize("args, fragments", [
    (["audit", "list", "--limit", "1_0"], ["--limit", "'1_0' is not a whole number"]),
    (["audit", "list", "--limit", "\uff13"], ["--limit", "is not a whole number"]),
    (["audit", "list", "--run", "\u0661"], ["--run", "is not a whole number"]),
    (["audit", "list", "--limit", "4.0"], ["--limit", "'4.0' is not a whole number"]),
    (["audit", "show", "1_0"], ["TASK", "'1_0' is not a whole number"]),
    (["audit", "count", "1", "--by", "ann", "--qty", "1_0"], ["--qty", "'1_0'"]),
    (["audit", "run", "--model", "m", "--data", "d", "--budget", "0.1_0"], ["--budget", "'0.1_0' is not a number"]),
    (["audit", "run", "--model", "m", "--data", "d", "--seed", "1_0"], ["--seed", "'1_0'"]),
    (["train", "--epochs", "1_0", "--out", "{tmp}/run"], ["--epochs", "'1_0'"]),
    (["data", "split", "--seed", "\uff11", "--out", "{tmp}/s.parquet"], ["--seed", "is not a whole number"]),
])
def test_a_number_option_takes_ascii_digits_only(tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    store = ["--db", str(tmp_path / "audit.db")] if args[0] == "audit" else []
    result = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], *store)
    assert_one_line_error(result, *fragments)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spelling", ["10", "+10", " 10"])
def test_plain_whole_numbers_still_parse(tmp_path, spelling):
    result = run_cli("audit", "list", "--limit", spelling, "--db", tmp_path / "none.db")
    assert_one_line_error(result, "no audit database at")


def audit_store(tmp_path: Path, tiny_artifact) -> Path:
    shutil.copy(PHOTO, tmp_path / "a.jpg")
    (tmp_path / "bins.csv").write_text("bin_id,image,record_qty\nb1,a.jpg,3\n")
    db = tmp_path / "audit.db"
    result = run_cli("audit", "run", "--model", tiny_artifact.path, "--data", tmp_path / "bins.csv", "--db", db,
                     "--backend", "torch", "--no-progress", "--budget", "1")
    assert result.returncode == 0, result.stderr
    return db


def test_a_count_of_1_0_records_nothing(tmp_path, tiny_artifact):
    db = audit_store(tmp_path, tiny_artifact)
    for qty in ("1_0", "\uff13", "3.0"):
        assert_one_line_error(run_cli("audit", "count", "1", "--by", "ann", "--qty", qty, "--db", db), "--qty")
    assert sqlite3.connect(db).execute("SELECT count(*) FROM count_observations").fetchone() == (0,)
    assert run_cli("audit", "count", "1", "--by", "ann", "--qty", "3", "--db", db).returncode == 0


@pytest.mark.parametrize("text, fragment", [
    ('{"bins": [{"bin_id": "b1", "image": "a.jpg", "record_qty": 3, "record_qty": 5}]}', "'record_qty' is given twice"),
    ('{"bins": [], "bins": [{"bin_id": "b1", "image": "a.jpg", "record_qty": 3}]}', "'bins' is given twice"),
    ('{"bins": [{"bin_id": "b1", "image": "a.jpg", "lines": [{"sku": "S", "qty": 1, "qty": 9}]}]}', "'qty' is given twice"),
    ('{"bins": [{"bin_id": "b1", "image": "a.jpg", "record_qty": NaN}]}', "NaN is not a JSON number"),
    ('{"bins": [{"bin_id": "b1", "image": "a.jpg", "lines": [{"sku": "S", "qty": 1, "weight": -Infinity}]}]}',
     "-Infinity is not a JSON number"),
    ('{"bins": [{"bin_id": "b1", "image": "a.jpg", "lines": [{"sku": "S", "qty": 1, "weight": 1e400}]}]}',
     "1e400 is too large"),
])
def test_a_json_source_python_would_resolve_quietly_is_refused(tmp_path, text, fragment):
    shutil.copy(PHOTO, tmp_path / "a.jpg")
    path = tmp_path / "records.json"
    path.write_text(text)
    with pytest.raises(DataError) as refused:
        read_source(path)
    assert str(path) in str(refused.value) and fragment in str(refused.value), str(refused.value)
    with pytest.raises(RequestError) as http:
        parse_json(text.encode())
    assert http.value.status == 400 and fragment in str(http.value), str(http.value)


def test_a_metadata_file_with_a_key_twice_is_one_skipped_line_in_data_index(tmp_path):
    root = tmp_path / "bucket"
    for sub in ("bin-images", "metadata"):
        (root / sub).mkdir(parents=True)
    for stem in ("00450", "00451"):
        shutil.copy(SAMPLE_DIR / "bin-images" / f"{stem}.jpg", root / "bin-images")
        shutil.copy(SAMPLE_DIR / "metadata" / f"{stem}.json", root / "metadata")
    meta = root / "metadata" / "00451.json"
    meta.write_text(meta.read_text().replace('"EXPECTED_QUANTITY"', '"EXPECTED_QUANTITY": 9, "EXPECTED_QUANTITY"', 1))
    result = run_cli("data", "index", root, "--out", tmp_path / "m.parquet", "--no-progress")
    assert "'EXPECTED_QUANTITY' is given twice" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "1 usable photo" in result.stdout, result.stdout


@pytest.mark.parametrize("bin_id, fragment", [
    ("A-1\u200b", "U+200B"),
    ("\ufeffA-1", "U+FEFF"),
    ("A\u2060-1", "U+2060"),
    ("\u200eA-1", "U+200E"),
    (unicodedata.normalize("NFD", "Caf\u00e9"), "is not in Unicode's composed form NFC"),
])
def test_a_bin_id_that_would_look_like_another_is_refused(tmp_path, bin_id, fragment):
    shutil.copy(PHOTO, tmp_path / "a.jpg")
    shutil.copy(OTHER, tmp_path / "b.jpg")
    path = tmp_path / "bins.csv"
    path.write_text(f"bin_id,image,record_qty\n{bin_id},a.jpg,3\nA-1,b.jpg,2\n", encoding="utf-8")
    with pytest.raises(DataError) as refused:
        read_source(path)
    assert f"{path}:2" in str(refused.value) and fragment in str(refused.value), str(refused.value)


def test_a_sku_in_decomposed_form_is_refused_and_an_image_path_is_taken_as_written(tmp_path):
    nfd = unicodedata.normalize("NFD", "caf\u00e9")
    shutil.copy(PHOTO, tmp_path / f"{nfd}.jpg")
    path = tmp_path / "lines.csv"
    path.write_text(f"bin_id,image,sku,qty\nb1,{nfd}.jpg,S-{nfd},1\n", encoding="utf-8")
    with pytest.raises(DataError, match="sku 'S-caf"):
        read_source(path)
    path.write_text(f"bin_id,image,sku,qty\nb1,{nfd}.jpg,S-1,1\n", encoding="utf-8")
    assert [s.image for s in read_source(path)][0].endswith(f"{nfd}.jpg")


@pytest.mark.parametrize("option, value", [("--name", "run\u200b1"), ("--by", "ann\ufeff"), ("--by", "\u200fann")])
def test_an_invisible_character_in_an_option_is_refused(tmp_path, option, value):
    result = run_cli("audit", "run", "--model", "m", "--data", "d", option, value, "--db", tmp_path / "a.db")
    assert_one_line_error(result, option, "U+")
    assert list(tmp_path.iterdir()) == []


def test_a_comment_may_still_hold_a_zero_width_joiner_of_an_emoji(tmp_path, tiny_artifact):
    db = audit_store(tmp_path, tiny_artifact)
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    result = run_cli("audit", "count", "1", "--by", "Jos\u00e9", "--qty", "3", "--comment", f"ok {family}", "--db", db)
    assert result.returncode == 0, result.stderr
    assert json.loads(run_cli("audit", "show", "1", "--db", db).stdout)["counts"][0]["comment"] == f"ok {family}"
