"""The record's SKU lines as audit input: a bucket's BIN_FCSKU_DATA (real ABID metadata), the line CSV, the JSON records
document (a file, and the `records` part of POST /v1/audit-runs on a real server), `--lines ignore`, and every bad input
refused in one line (file:line, or the bin's index) before the model is loaded or a photo read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from bintally.audit.run import snapshots_digest
from bintally.audit.snapshots import SnapshotIn, csv_snapshots, json_snapshots, read_source
from bintally.data.records import MAX_LINES, SkuLine
from bintally.errors import DataError
from bintally.paths import SAMPLE_DIR
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.conftest import copy_bucket
from tests.servers import AUTH

LINE_HEADER = "bin_id,image,sku,qty,length,width,height,unit,weight,weight_unit,captured_at"


def metadata(stem: str, root: Path = SAMPLE_DIR) -> dict:
    return json.loads((root / "metadata" / f"{stem}.json").read_text())


def audit(db: Path, model, data, *extra):
    return run_cli("audit", "run", "--model", model, "--data", data, "--db", db, "--backend", "torch", "--no-progress", *extra)


def rows(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(query).fetchall()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- a bucket's BIN_FCSKU_DATA


def test_the_sample_buckets_lines_are_its_metadata_in_inches_and_pounds():
    snapshots = {s.bin_id: s for s in read_source(SAMPLE_DIR)}
    assert len(snapshots) == 1132
    # several lines, a line without weight, lines without dimensions, five or more lines, an empty bin
    for stem in ("00460", "00463", "02524", "00465", "00615"):
        doc, snapshot = metadata(stem), snapshots[stem]
        items = doc.get("BIN_FCSKU_DATA") or {}
        assert snapshot.record_qty == doc["EXPECTED_QUANTITY"] == sum(line.qty for line in snapshot.lines)
        assert {line.sku for line in snapshot.lines} == {item["asin"] for item in items.values()}
        for line in snapshot.lines:
            item = items[line.sku]
            assert line.qty == item["quantity"]
            for name, value in (("length", line.length_in), ("width", line.width_in), ("height", line.height_in),
                                ("weight", line.weight_lb)):
                assert value == (None if item.get(name) is None else pytest.approx(item[name]["value"]))
    assert snapshots["00615"].lines == () and snapshots["00615"].record_qty == 0  # EXPECTED_QUANTITY 0, no lines: fine
    assert not all(line.has_dimensions for line in snapshots["02524"].lines)
    assert snapshots["00460"].lines != () and any(line.weight_lb is None for line in snapshots["00460"].lines)
    assert all(s.lines == () for s in read_source(SAMPLE_DIR, "ignore"))


def test_a_bin_with_a_total_and_no_lines_is_a_totals_only_bin(tmp_path):
    bucket = copy_bucket(SAMPLE_DIR, tmp_path / "bucket", ["00450", "00451"])
    doc = metadata("00451")
    doc.pop("BIN_FCSKU_DATA")
    (bucket / "metadata" / "00451.json").write_text(json.dumps(doc))
    snapshots = {s.bin_id: s for s in read_source(bucket)}
    assert snapshots["00451"].lines == () and snapshots["00451"].record_qty == doc["EXPECTED_QUANTITY"] > 0
    assert snapshots["00450"].lines and snapshots["00450"].record_qty == metadata("00450")["EXPECTED_QUANTITY"]


@pytest.fixture
def disagreeing_bucket(mirror, tmp_path) -> Path:
    """Real mirror bins: 01405 and 01406 (their lines do not sum to EXPECTED_QUANTITY) between two that agree."""
    return copy_bucket(mirror, tmp_path / "bucket", ["01404", "01405", "01406", "01407"])


def test_a_bucket_whose_lines_do_not_sum_to_the_record_is_refused_before_the_model_loads(tmp_path, disagreeing_bucket):
    expected, lines = metadata("01405", disagreeing_bucket)["EXPECTED_QUANTITY"], metadata("01405", disagreeing_bucket)["BIN_FCSKU_DATA"]
    total = sum(item["quantity"] for item in lines.values())
    assert (total, expected) == (4, 5)
    db = tmp_path / "a.db"
    result = audit(db, tmp_path / "no-such-model", disagreeing_bucket)
    assert_one_line_error(result, str(disagreeing_bucket / "metadata" / "01405.json"), f"sum to {total}",
                          f"EXPECTED_QUANTITY is {expected}", "1 more", "01406.json", "--lines ignore")
    assert not db.exists()


def test_lines_ignore_audits_the_totals_as_a_run_of_its_own(tmp_path, tiny_artifact, disagreeing_bucket):
    db = tmp_path / "a.db"
    result = audit(db, tiny_artifact.path, disagreeing_bucket, "--lines", "ignore")
    assert result.returncode == 0, result.stderr
    records = dict(rows(db, "SELECT bin_id, record_qty FROM snapshots"))
    assert records == {stem: metadata(stem, disagreeing_bucket)["EXPECTED_QUANTITY"] for stem in ("01404", "01405", "01406", "01407")}
    assert json.loads(rows(db, "SELECT settings FROM audit_runs")[0][0])["lines"] == "ignore"


def test_a_run_with_lines_and_one_without_are_two_runs_and_other_snapshots(tmp_path, tiny_artifact, small_bucket):
    db = tmp_path / "a.db"
    for extra in ((), ("--lines", "ignore"), ()):
        result = audit(db, tiny_artifact.path, small_bucket, *extra)
        assert result.returncode == 0, result.stderr
    runs = rows(db, "SELECT name, settings FROM audit_runs ORDER BY id")
    assert len(runs) == 2 and runs[0][0] != runs[1][0]  # the third command found the first run
    assert [json.loads(settings)["lines"] for _, settings in runs] == ["use", "ignore"]
    with_lines = sum(bool(metadata(p.stem, small_bucket).get("BIN_FCSKU_DATA")) for p in (small_bucket / "metadata").iterdir())
    assert 0 < with_lines < 30
    # a bin with lines is another snapshot than its total alone; an empty bin (no lines) is the same one
    assert rows(db, "SELECT count(*) FROM snapshots") == [(30 + with_lines,)]


# ---------------------------------------------------------------- snapshot identity


def legacy_key(s: SnapshotIn, sha: str) -> str:
    stamp = s.captured_at.isoformat() if s.captured_at else ""
    return hashlib.sha256(f"{s.bin_id}\x1f{sha}\x1f{s.record_qty}\x1f{stamp}".encode()).hexdigest()


def test_a_snapshots_key_and_digest_include_its_lines_and_its_photo():
    a, b = SkuLine("A", 2, 10.0, 5.0, 1.0, 0.5), SkuLine("B", 1)
    totals = SnapshotIn("bin-1", "x.jpg", 3)
    lined = SnapshotIn("bin-1", "x.jpg", 3, lines=(a, b))
    assert totals.key("f00") != legacy_key(totals, "f00")  # issue 19: the photo's URI is part of the identity
    assert totals.key("") != SnapshotIn("bin-1", "y.jpg", 3).key("")  # two unreadable photos of one bin are two snapshots
    assert totals.key("f00") != totals.key("f01")
    assert lined.key("f00") != totals.key("f00")
    assert lined.key("f00") == SnapshotIn("bin-1", "x.jpg", 3, lines=(b, a)).key("f00")  # the order of lines does not matter
    assert lined.key("f00") != SnapshotIn("bin-1", "x.jpg", 3, lines=(SkuLine("A", 2, 10.0, 5.0, 1.5, 0.5), b)).key("f00")
    assert lined.key("f00") != SnapshotIn("bin-1", "x.jpg", 3, lines=(SkuLine("A", 1, 10.0, 5.0, 1.0, 0.5), SkuLine("B", 2))).key("f00")
    legacy = hashlib.sha256("bin-1\x1fx.jpg\x1f3\x1f\x1e".encode()).hexdigest()
    assert snapshots_digest([totals]) == legacy and snapshots_digest([lined]) != legacy


# ---------------------------------------------------------------- the line CSV


def test_a_line_csv_groups_rows_into_bins_and_sums_the_same_sku(tmp_path):
    src = write(tmp_path / "lines.csv", LINE_HEADER + "\n"
                "A-1,a.jpg,S1,2,10,5,1,in,0.5,lb,2026-11-25T14:03:00Z\n"
                "B-2,b.jpg,S9,1,,,,,,,\n"
                "A-1,a.jpg,S2,1,,,,,,,2026-11-25T14:03:00Z\n"
                "A-1,a.jpg,S1,3,10,5,1,in,0.5,lb,2026-11-25T14:03:00Z\n"
                "\n"
                "C-3,c.jpg,,0,,,,,,,\n"
                "A-1,a2.jpg,S1,1,,,,,,,\n")
    snapshots = {(s.bin_id, Path(s.image).name): s for s in csv_snapshots(src)}
    assert set(snapshots) == {("A-1", "a.jpg"), ("A-1", "a2.jpg"), ("B-2", "b.jpg"), ("C-3", "c.jpg")}
    a = snapshots["A-1", "a.jpg"]
    assert a.lines == (SkuLine("S1", 5, 10.0, 5.0, 1.0, 0.5), SkuLine("S2", 1)) and a.record_qty == 6
    assert a.image == str((tmp_path / "a.jpg").resolve()) and a.captured_at.isoformat() == "2026-11-25T14:03:00"
    assert snapshots["B-2", "b.jpg"].lines == (SkuLine("S9", 1),) and snapshots["B-2", "b.jpg"].captured_at is None
    empty = snapshots["C-3", "c.jpg"]
    assert empty.lines == () and empty.record_qty == 0  # an empty sku with qty 0: the record lists nothing
    assert snapshots["A-1", "a2.jpg"].record_qty == 1
    assert [s.bin_id for s in read_source(src)] == ["A-1", "A-1", "B-2", "C-3"]
    assert all(s.lines == () and s.record_qty for s in read_source(src, "ignore") if s.bin_id != "C-3")


def test_metric_units_give_the_same_lines_as_inches_and_pounds(tmp_path):
    inches = write(tmp_path / "in.csv", "bin_id,image,sku,qty,length,width,height,weight\n"
                   "b,x.jpg,S1,2,10,4,1,2.2046226218\nb,x.jpg,S2,1,39.37007874,1.968503937,0.3937007874,0.0625\n")
    metric = write(tmp_path / "metric.csv", "bin_id,image,sku,qty,length,width,height,unit,weight,weight_unit\n"
                   "b,x.jpg,S1,2,25.4,10.16,2.54,cm,1,kg\nb,x.jpg,S2,1,1,0.05,0.01,M,1,OZ\n")
    with_mm = write(tmp_path / "mm.csv", "bin_id,image,sku,qty,length,width,height,unit,weight,weight_unit\n"
                    "b,x.jpg,S1,2,254,101.6,25.4,mm,1000,g\nb,x.jpg,S2,1,1000,50,10,mm,0.0625,lb\n")
    expected = read_source(inches)[0]
    for other in (metric, with_mm):
        got = read_source(other)[0]
        assert [line.sku for line in got.lines] == ["S1", "S2"] and got.record_qty == 3
        for mine, theirs in zip(got.lines, expected.lines):
            assert mine.qty == theirs.qty
            for name in ("length_in", "width_in", "height_in", "weight_lb"):
                assert getattr(mine, name) == pytest.approx(getattr(theirs, name), rel=1e-6), (other.name, mine.sku, name)
        assert got.key("sha") == expected.key("sha")  # the same lines are the same snapshot, whatever units they came in


def test_a_json_records_file_is_a_source(tmp_path):
    doc = {"bins": [{"bin_id": "A-1", "image": "a.jpg", "captured_at": "2026-11-25T14:03:00Z",
                     "lines": [{"sku": "S1", "qty": 2, "length": 25.4, "width": 10.16, "height": 2.54, "unit": "cm",
                                "weight": 1, "weight_unit": "kg"}, {"sku": "S2", "qty": 1}]},
                    {"bin_id": "B-2", "image": "b.jpg", "record_qty": 4},
                    {"bin_id": "C-3", "image": "c.jpg", "lines": []}]}
    snapshots = {s.bin_id: s for s in read_source(write(tmp_path / "records.json", json.dumps(doc)))}
    a = snapshots["A-1"]
    assert a.record_qty == 3 and a.image == str((tmp_path / "a.jpg").resolve())
    assert a.lines[0] == SkuLine("S1", 2, pytest.approx(10.0), pytest.approx(4.0), pytest.approx(1.0), pytest.approx(2.2046226218))
    assert snapshots["B-2"].lines == () and snapshots["B-2"].record_qty == 4
    assert snapshots["C-3"].lines == () and snapshots["C-3"].record_qty == 0


def lines_csv(n: int) -> str:
    return "bin_id,image,sku,qty\n" + "".join(f"big,x.jpg,S{i},1\n" for i in range(n))


BAD_LINE_CSVS = [
    ("bin_id,image,sku,qty\nb,x.jpg,S1,2\nb,x.jpg,S2,-1\n", 3, ["qty -1 is below 0"]),
    ("bin_id,image,sku,qty\nb,x.jpg,S1,1.5\n", 2, ["qty 1.5 is fractional"]),
    ("bin_id,image,sku,qty\nb,x.jpg,S1,two\n", 2, ["qty 'two' is not a whole number"]),
    ("bin_id,image,sku,qty,length,width,height,unit\nb,x.jpg,S1,1,1,2,3,ft\n", 2, ["unknown unit 'ft'", "cm"]),
    ("bin_id,image,sku,qty,weight,weight_unit\nb,x.jpg,S1,1,3,stone\n", 2, ["unknown weight_unit 'stone'", "kg"]),
    ("bin_id,image,sku,qty,unit\nb,x.jpg,S1,1,furlong\n", 2, ["unknown unit 'furlong'"]),  # a bad unit even without sizes
    ("bin_id,image,sku,qty,length,width,height\nb,x.jpg,S1,1,1,2,3\nc,y.jpg,S1,1,9,9,9\nb,x.jpg,S1,1,1,2,4\n", 4,
     ["SKU 'S1' of bin 'b'", ":2 with other dimensions or weight"]),
    ("bin_id,image,sku,qty,weight\nb,x.jpg,S1,1,1\nb,x.jpg,S1,1,2\n", 3, ["other dimensions or weight"]),
    ("bin_id,image,sku,qty,length\nb,x.jpg,S1,1,4\n", 2, ["length, width and height together"]),
    ("bin_id,image,record_qty,sku,qty\nb,x.jpg,1,S1,1\n", 1, ["mixes the totals CSV (record_qty) with the line CSV"]),
    ("bin_id,image,sku,qty,record_qty\nb,x.jpg,S1,1,1\n", 1, ["mixes the totals CSV"]),
    ("bin_id,image,sku,qty,colour\nb,x.jpg,S1,1,red\n", 1, ["unknown column(s) colour"]),
    ("bin_id,image,sku,qty,captured_at\nb,x.jpg,S1,1,2026-11-25T14:03:00Z\nb,x.jpg,S2,1,2026-11-25T15:03:00Z\n", 3,
     ["captured_at", "share one time"]),
    ("bin_id,image,sku,qty,captured_at\nb,x.jpg,S1,1,2026-11-25T14:03:00Z\nb,x.jpg,S2,1,\n", 3, ["captured_at"]),
    ("bin_id,image,sku,qty\nb,x.jpg,,2\n", 2, ["empty sku with qty 2"]),
    ("bin_id,image,sku,qty\nb,x.jpg,S1,1\nb,x.jpg,,0\n", 3, ["empty sku", "beside its SKU lines"]),
    ("bin_id,image,sku,qty\nb,x.jpg,,0\nb,x.jpg,S1,1\n", 3, ["beside the row with an empty sku"]),
    ("bin_id,image,sku,qty\n,x.jpg,S1,1\n", 2, ["empty bin_id"]),
    ("bin_id,image,sku,qty\nb,ftp://h/x.jpg,S1,1\n", 2, ["unsupported URI scheme"]),
    ("bin_id,image,qty\nb,x.jpg,1\n", None, ["missing sku"]),
    (lines_csv(MAX_LINES + 1), MAX_LINES + 2, [f"more than {MAX_LINES:,} SKU lines"]),
]


@pytest.mark.parametrize("content, line, fragments", BAD_LINE_CSVS, ids=[f"{i}" for i in range(len(BAD_LINE_CSVS))])
def test_a_bad_line_csv_is_one_line_naming_file_and_line_before_the_model_or_any_photo(tmp_path, content, line, fragments):
    bad = write(tmp_path / "bad.csv", content)
    db = tmp_path / "a.db"
    started = time.monotonic()
    result = audit(db, tmp_path / "no-such-model", bad)  # a model that is never loaded, photos that are never read
    where = f"{bad}:{line}:" if line else f"{bad}:"
    assert_one_line_error(result, where, *fragments)
    assert time.monotonic() - started < 10
    assert not db.exists()


def test_the_same_sku_with_the_same_size_in_other_units_is_summed_quietly(tmp_path):
    src = write(tmp_path / "s.csv", "bin_id,image,sku,qty,length,width,height,unit\nb,x.jpg,S1,1,1,2,3,in\nb,x.jpg,S1,2,2.54,5.08,7.62,cm\n")
    assert read_source(src)[0].lines == (SkuLine("S1", 3, 1.0, 2.0, 3.0),)


# ---------------------------------------------------------------- JSON over HTTP


def records_part(doc) -> tuple:
    return ("records", ("records.json", json.dumps(doc).encode() if not isinstance(doc, bytes) else doc, "application/json"))


def photo_parts(*names: str) -> list:
    return [("photos", (name, (SAMPLE_DIR / "bin-images" / name).read_bytes(), "image/jpeg")) for name in names]


def sample_lines(stem: str) -> list[dict]:
    """A sample bin's BIN_FCSKU_DATA as JSON lines (inches, pounds)."""
    items = (metadata(stem).get("BIN_FCSKU_DATA") or {}).values()
    return [{"sku": item["asin"], "qty": item["quantity"]} | {k: item[k]["value"] for k in ("length", "width", "height", "weight")
                                                              if item.get(k)} for item in items]


@pytest.fixture(scope="module")
def http(audit_server):
    with httpx.Client(base_url=audit_server.url, headers=AUTH, timeout=120) as client:
        yield client


def test_records_with_lines_create_a_run_over_http(http):
    doc = {"bins": [{"bin_id": "L-00460", "image": "00460.jpg", "lines": sample_lines("00460")},
                    {"bin_id": "L-00462", "image": "00462.jpg", "record_qty": 4, "lines": sample_lines("00462")},
                    {"bin_id": "L-00463", "image": "00463.jpg", "record_qty": 4, "captured_at": "2026-11-25T14:03:00Z"},
                    {"bin_id": "L-00615", "image": "00615.jpg", "lines": []}]}
    photos = photo_parts("00460.jpg", "00462.jpg", "00463.jpg", "00615.jpg")
    first = http.post("/v1/audit-runs", files=[records_part(doc), *photos], data={"name": "lines-run", "budget": "1", "control": "0"})
    assert first.status_code == 201, first.text
    run = first.json()
    assert run["metrics"]["bins"] == 4 and run["settings"]["lines"] == "use"
    tasks = {t["bin_id"]: t for t in http.get(f"/v1/audit-runs/{run['id']}/tasks").json()["tasks"]}
    assert {b: t["record_qty"] for b, t in tasks.items()} == {"L-00460": 4, "L-00462": 4, "L-00463": 4, "L-00615": 0}
    again = http.post("/v1/audit-runs", files=[records_part(doc), *photos], data={"name": "lines-run", "budget": "1", "control": "0"})
    assert again.status_code == 200 and again.json()["reused"]
    ignored = http.post("/v1/audit-runs", files=[records_part(doc), *photos],
                        data={"name": "lines-ignored", "budget": "1", "control": "0", "lines": "ignore"})
    assert ignored.status_code == 201, ignored.text
    assert ignored.json()["settings"]["lines"] == "ignore"


def test_a_line_csv_in_the_csv_part_creates_a_run(http):
    text = "bin_id,image,sku,qty,length,width,height,unit\nC-00450,00450.jpg,S1,2,20,10,5,cm\nC-00450,00450.jpg,S2,1,,,,\n"
    answer = http.post("/v1/audit-runs", files=[("csv", ("lines.csv", text.encode(), "text/csv")), *photo_parts("00450.jpg")],
                       data={"name": "line-csv-run", "budget": "1", "control": "0"})
    assert answer.status_code == 201, answer.text
    tasks = http.get(f"/v1/audit-runs/{answer.json()['id']}/tasks").json()["tasks"]
    assert [(t["bin_id"], t["record_qty"]) for t in tasks] == [("C-00450", 3)]


def one_bin(**fields) -> dict:
    return {"bins": [{"bin_id": "B-1", "image": "00450.jpg"} | fields]}


BAD_RECORDS = [
    (one_bin(record_qty=5, lines=[{"sku": "S1", "qty": 2}]), ["bins[0] (bin 'B-1')", "record_qty 5 is not the sum", "(2)"]),
    (one_bin(record_qty=3, lines=[]), ["bins[0] (bin 'B-1')", "record_qty 3 is not the sum"]),
    (one_bin(lines=[{"sku": "S1", "qty": -1}]), ["bins[0] (bin 'B-1') lines[0]", "below 0"]),
    (one_bin(lines=[{"sku": "S1", "qty": 1.5}]), ["lines[0]", "fractional"]),
    (one_bin(lines=[{"sku": "S1", "qty": 1, "length": 1, "width": 1, "height": 1, "unit": "ft"}]), ["lines[0]", "unknown unit 'ft'"]),
    (one_bin(lines=[{"sku": "S1", "qty": 1, "weight": 1, "weight_unit": "stone"}]), ["unknown weight_unit 'stone'"]),
    (one_bin(lines=[{"sku": "S1", "qty": 1, "weight": 1}, {"sku": "S1", "qty": 1, "weight": 2}]),
     ["lines[1]", "also at", "lines[0]", "other dimensions or weight"]),
    (one_bin(lines=[{"sku": "S1", "qty": 1, "weight": True}]), ["weight True is not a number"]),
    (one_bin(lines=[{"sku": "", "qty": 0}]), ["lines[0]", "sku must be"]),
    (one_bin(lines=[{"sku": "S1", "qty": 1, "colour": "red"}]), ["unknown field(s) colour"]),
    (one_bin(lines={"sku": "S1"}), ["lines must be a list"]),
    (one_bin(), ["give record_qty, or the record's lines"]),
    (one_bin(lines=[{"sku": f"S{i}", "qty": 1} for i in range(MAX_LINES + 1)]), [f"{MAX_LINES + 1:,} SKU lines", "limit"]),
    ({"bins": [{"bin_id": "B-1", "image": "00450.jpg", "record_qty": 1}, {"bin_id": "B-1", "image": "00450.jpg", "record_qty": 1}]},
     ["bins[1]", "also at", "bins[0]", "with the same record"]),
    ({"bins": [{"bin_id": "B-1", "image": "00450.jpg", "record_qty": 1}, {"bin_id": "B-2", "image": "other.jpg", "record_qty": 1}]},
     ["bins[1]", "not one of the uploaded photos"]),
    ({"bins": [{"bin_id": ["B"], "image": "00450.jpg", "record_qty": 1}]}, ["bins[0]", "bin_id must be text"]),
    ({"bins": "all of them"}, ['{"bins": [']),
    ({"bins": [], "extra": 1}, ['{"bins": [']),
    ([1, 2], ['{"bins": [']),
    (b"{not json", ["not valid JSON"]),
    (b"[" * 100_000 + b"]" * 100_000, ["not valid JSON (nested too deeply)"]),
    ({"bins": [{"bin_id": "B", "image": "00450.jpg", "lines": [{"sku": {"a": [[[[1]]]]}, "qty": 1}]}]}, ["sku must be text"]),
    ({"bins": []}, ["no bins"]),
]


@pytest.mark.parametrize("doc, fragments", BAD_RECORDS, ids=[str(i) for i in range(len(BAD_RECORDS))])
def test_bad_records_are_a_400_naming_the_bin_and_change_nothing(http, doc, fragments):
    before = http.get("/v1/audit-runs").json()["runs"]
    started = time.monotonic()
    answer = http.post("/v1/audit-runs", files=[records_part(doc), *photo_parts("00450.jpg")], data={"name": "bad-records"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "\n" not in error
    for fragment in fragments:
        assert fragment in error, (fragment, error)
    assert time.monotonic() - started < 10
    assert http.get("/v1/audit-runs").json()["runs"] == before


def test_csv_and_records_together_or_a_bad_lines_setting_are_refused(http):
    good = one_bin(record_qty=1)
    text = io.StringIO()
    csv.writer(text).writerows([["bin_id", "image", "record_qty"], ["B-1", "00450.jpg", "1"]])
    both = http.post("/v1/audit-runs", files=[("csv", ("s.csv", text.getvalue().encode(), "text/csv")), records_part(good),
                                              *photo_parts("00450.jpg")])
    assert both.status_code == 400 and "not both" in both.json()["error"]
    setting = http.post("/v1/audit-runs", files=[records_part(good), *photo_parts("00450.jpg")], data={"lines": "sometimes"})
    assert setting.status_code == 400 and "lines" in setting.json()["error"] and "sometimes" in setting.json()["error"]
    nothing = http.post("/v1/audit-runs", files=photo_parts("00450.jpg"))
    assert nothing.status_code == 400 and "'records'" in nothing.json()["error"]


def test_json_snapshots_refuses_a_document_with_too_many_bins():
    from bintally.audit.snapshots import MAX_BINS

    doc = {"bins": [{}] * (MAX_BINS + 1)}
    with pytest.raises(DataError, match=f"more than the limit of {MAX_BINS:,}"):
        json_snapshots(doc, "records.json", {})
