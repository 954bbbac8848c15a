"""Bad input to the data stage: one line naming the file and the problem, exit 2, and nothing already done lost.

Every case uses real ABID photos from the mirror; broken files are made from them at run time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bintally.data import DataError, build_manifest, check_manifest, index_to_manifest, read_manifest, split_manifest
from bintally.data.manifest import write_manifest
from bintally.data.report import write_report
from bintally.data.sample import read_or_index
from bintally.data.split import SPLITS, SplitConfig, split_summary, split_warnings
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.conftest import copy_bucket
from tests.helpers import png_bomb, process_group, wait_for

LAYOUT_HINTS = ("bin-images/", "metadata/", "<count>/", "path,count")


def spread_ids(mirror: Path, n: int) -> list[str]:
    """n mirror ids far apart (different id blocks), so that they form many independent groups."""
    ids = sorted(p.stem for p in (mirror / "bin-images").iterdir())
    return ids[:: len(ids) // n][:n]


@pytest.fixture(scope="module")
def spread_manifest(mirror, tmp_path_factory) -> pd.DataFrame:
    """51 real photos from all over the mirror, indexed."""
    bucket = copy_bucket(mirror, tmp_path_factory.mktemp("spread") / "bucket", spread_ids(mirror, 51))
    return build_manifest(bucket, progress=False)


@pytest.fixture
def bucket(mirror, tmp_path) -> Path:
    """12 real photos in bucket layout, ids 00100-00111."""
    return copy_bucket(mirror, tmp_path / "bucket", [f"{i:05d}" for i in range(100, 112)])


@pytest.fixture
def manifest(bucket, tmp_path) -> Path:
    out = tmp_path / "m.parquet"
    index_to_manifest(bucket, out, progress=False)
    return out


# ---------------------------------------------------------------- split: any number of photos


@pytest.mark.parametrize("n", [1, 2, 5, 27, 51])
def test_split_works_for_any_number_of_photos(spread_manifest, n):
    df = spread_manifest.head(n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scikit-learn warning may escape
        split = split_manifest(df)
    assert set(split["split"]) <= set(SPLITS) and len(split) == n
    found = split_warnings(split)
    for s in SPLITS:
        assert (f"the {s} split is empty" in " ".join(found)) == (s not in set(split["split"])), found
    if n >= 27:  # enough groups for every split, and every class with photos is in train
        assert set(split["split"]) == set(SPLITS)
        assert set(split.loc[split["split"] == "train", "label"]) == set(split["label"])


def warned_classes(warning: str) -> list[str]:
    """['0', '2'] from 'classes 0, 2 have no photos in ...'."""
    return warning.split(" ", 1)[1].split(" ha", 1)[0].split(", ")


def test_split_warnings_name_each_class_missing_from_a_split(spread_manifest):
    split = split_manifest(spread_manifest.head(5))
    found = [w for w in split_warnings(split) if w.startswith("class")]
    filled = [s for s in SPLITS if (split["split"] == s).any()]
    for label, name in enumerate(["0", "1", "2", "3", "4", "5", "6+"]):
        missing = [s for s in filled if not ((split["split"] == s) & (split["label"] == label)).any()]
        where = "any split" if missing == filled else " or ".join(missing)
        mentions = [w for w in found if name in warned_classes(w)]
        assert mentions == ([w for w in mentions if w.endswith(f"no photos in {where}")] if missing else []), (name, found)
        assert bool(mentions) == bool(missing), (name, found)


def test_split_cli_on_one_photo_warns_in_one_line_each(spread_manifest, tmp_path):
    path = tmp_path / "one.parquet"
    write_manifest(spread_manifest.head(1), path, info=spread_manifest.attrs["info"])
    result = run_cli("data", "split", path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "least populated" not in result.stderr
    assert "warning: the val split is empty" in result.stderr and "warning: the test split is empty" in result.stderr
    assert read_manifest(path)["split"].tolist() == ["train"]


@pytest.mark.parametrize("fractions", ["0.8,0.1", "nan,0.5,0.5", "0.5,0.5,0.5", "-0.2,0.6,0.6"])
def test_bad_fractions_are_one_line_and_leave_the_manifest(manifest, fractions):
    before = manifest.read_bytes()
    result = run_cli("data", "split", manifest, "--fractions", fractions)
    assert_one_line_error(result, "fractions must be three numbers")
    assert manifest.read_bytes() == before


def test_split_of_a_manifest_with_no_usable_photo(manifest):
    df = read_manifest(manifest)
    df["status"] = "corrupt: not an image"
    write_manifest(df, manifest, info=df.attrs["info"])
    before = manifest.read_bytes()
    assert_one_line_error(run_cli("data", "split", manifest), str(manifest), "no photos to split", "0 of 12 photos are usable")
    assert manifest.read_bytes() == before


# ---------------------------------------------------------------- split --file-list (the capstones' counts 1-5)


def test_split_with_the_real_file_list_end_to_end(mirror, tmp_path):
    listing = json.loads((mirror / "file_list.json").read_text())
    on_disk = {p.stem for p in (mirror / "bin-images").iterdir()}
    listed = {Path(p).stem: int(count) for count, paths in listing.items() for p in paths}
    chosen = [i for count in range(1, 6) for i in sorted(i for i, c in listed.items() if c == count and i in on_disk)[:5]]
    others = sorted(on_disk - set(listed))[:5]  # photos the list does not name
    src = copy_bucket(mirror, tmp_path / "bucket", chosen + others)
    manifest = tmp_path / "m.parquet"
    assert run_cli("data", "index", src, "--out", manifest, "--no-progress").returncode == 0
    result = run_cli("data", "split", manifest, "--file-list", mirror / "file_list.json")
    assert result.returncode == 0, result.stderr
    df = read_manifest(manifest)
    assert df.attrs["info"]["classes"] == ["1", "2", "3", "4", "5"]
    assert set(df.loc[df["split"] != "excluded", "id"]) == set(chosen)
    assert set(df.loc[df["id"].isin(others), "split"]) == {"excluded"}
    kept = df[df["split"] != "excluded"]
    assert (kept["label"] == kept["count"] - 1).all() and (kept["count"] == kept["id"].map(listed)).all()
    summary = split_summary(df)
    assert "0" not in summary.index and "6+" not in summary.index and "6+" not in result.stdout
    assert run_cli("data", "check", manifest).returncode == 0
    assert run_cli("data", "report", manifest, "--out", tmp_path / "report").returncode == 0


@pytest.mark.parametrize("content, problem", [
    ("[1, 2", "malformed JSON"),
    ('["metadata/00100.json"]', "expected a Udacity file list"),
    ('{"one": ["metadata/00100.json"]}', "keys must be counts"),
    ('{"1": [100]}', "expected a Udacity file list"),
    (None, "is a folder"),
])
def test_malformed_file_list_is_one_line_naming_it(manifest, tmp_path, content, problem):
    file_list = tmp_path / "file_list.json"
    file_list.mkdir() if content is None else file_list.write_text(content)
    before = manifest.read_bytes()
    assert_one_line_error(run_cli("data", "split", manifest, "--file-list", file_list), str(file_list), problem)
    assert manifest.read_bytes() == before


def test_file_list_naming_no_photo_of_the_manifest(manifest, tmp_path):
    (tmp_path / "fl.json").write_text('{"1": ["metadata/999999.json"], "2": []}')
    assert_one_line_error(run_cli("data", "split", manifest, "--file-list", tmp_path / "fl.json"),
                          str(manifest), "none of them named by the file list")


# ---------------------------------------------------------------- check: files missing or changed since indexing


def test_check_names_photos_deleted_or_rewritten_since_indexing(bucket, manifest, tmp_path):
    images = bucket / "bin-images"
    (images / "00101.jpg").unlink()
    with Image.open(images / "00102.jpg") as img:
        img.convert("RGB").save(images / "00102.jpg", quality=50)
    result = run_cli("data", "check", manifest, "--json", tmp_path / "check.json")
    assert result.returncode == 1, result.stdout
    assert f"{images / '00101.jpg'}: missing since indexing" in result.stdout
    assert f"{images / '00102.jpg'}: changed since indexing (size" in result.stdout
    found = json.loads((tmp_path / "check.json").read_text())
    assert found["n_stale"] == 2 and {r["id"] for r in found["stale"]} == {"00101", "00102"}
    assert not check_manifest(read_manifest(manifest)).ok


def test_verify_hashes_catches_a_same_size_change(bucket, manifest):
    photo = bucket / "bin-images" / "00103.jpg"
    data = bytearray(photo.read_bytes())
    data[len(data) // 2] ^= 0xFF
    photo.write_bytes(bytes(data))
    assert run_cli("data", "check", manifest).returncode == 0  # same size: only the hash can tell
    result = run_cli("data", "check", manifest, "--verify-hashes")
    assert result.returncode == 1
    assert f"{photo}: changed since indexing (sha256 differs)" in result.stdout


# ---------------------------------------------------------------- read_manifest: what later stages rely on


def rewrite_column(path: Path, name: str, values: list) -> None:
    """Replace one column of a Parquet file, keeping its bintally metadata (as another tool might)."""
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index(name), name, pa.array(values))
    pq.write_table(table.replace_schema_metadata(pq.read_schema(path).metadata), path)


@pytest.mark.parametrize("column, bad_values, problem", [
    ("phash", {3: "xyz", 7: ""}, "phash 'xyz' is not 16 hex digits"),
    ("count", {3: -1}, "count -1 is not a whole number >= 0"),
    ("count", {3: 2.5, 9: 1.5}, "count 2.5 is not a whole number >= 0"),
    ("status", {3: None}, "no status"),
    ("split", {3: "training", 5: None}, "split 'training' is not one of train, val, test, excluded"),
    ("label", {3: 40}, "label 40 does not match count"),
])
def test_malformed_manifest_names_the_first_bad_row_and_the_count(manifest, column, bad_values, problem):
    df = split_manifest(read_manifest(manifest), SplitConfig(fractions=(0.5, 0.25, 0.25)))
    write_manifest(df, manifest, info=df.attrs["info"])
    values = df[column].astype(object).where(df[column].notna(), None).tolist()
    for row, value in bad_values.items():
        values[row] = value
    rewrite_column(manifest, column, values)
    with pytest.raises(DataError) as caught:
        read_manifest(manifest)
    message = str(caught.value)
    for fragment in (str(manifest), f"{len(bad_values)} malformed row(s) of 12", f"id '{df['id'][3]}'", problem):
        assert fragment in message, message
    assert_one_line_error(run_cli("data", "check", manifest), str(manifest), problem)


def test_manifest_written_by_another_tool_with_float_counts_is_read(manifest):
    rewrite_column(manifest, "count", [float(c) for c in read_manifest(manifest)["count"]])
    df = read_manifest(manifest)
    assert df["count"].dtype == "Int64" and (df["status"] == "ok").all()
    assert split_manifest(df)["split"].isin(SPLITS).all()


# ---------------------------------------------------------------- index: layouts, spreadsheets, unusable photos


def test_flat_folder_of_photos_names_the_layouts(mirror, tmp_path):
    flat = tmp_path / "photos"
    flat.mkdir()
    for i in ("00100", "00101"):
        shutil.copy(mirror / "bin-images" / f"{i}.jpg", flat)
    line = assert_one_line_error(run_cli("data", "index", flat, "--out", tmp_path / "m.parquet"), str(flat), "no counts")
    assert all(hint in line for hint in LAYOUT_HINTS), line
    assert not (tmp_path / "m.parquet").exists()


def test_csv_saved_by_a_spreadsheet_is_read(bucket):
    rows = ["\ufeff Path , Count ", "bin-images/00100.jpg,3", "bin-images/00101.jpg, 2.0 ", "bin-images/100.jpg,1", ",", ""]
    (bucket / "labels.csv").write_bytes("\r\n".join(rows).encode("utf-8"))
    df = build_manifest(bucket / "labels.csv", progress=False).set_index("id")
    assert df["count"].to_dict() == {"00100": 3, "00101": 2, "100": 1}
    assert df.loc["00100", "status"] == "ok" and df.loc["100", "status"] == "missing: no such file"
    (bucket / "utf16.csv").write_bytes("path,count\r\nbin-images/00100.jpg,3\r\n".encode("utf-16"))  # "Unicode text" from a spreadsheet
    assert build_manifest(bucket / "utf16.csv", progress=False).set_index("id")["count"].to_dict() == {"00100": 3}


@pytest.mark.parametrize("content, problem", [
    (b"", "CSV is empty"),
    (b"file,n\r\na.jpg,1\r\n", "CSV needs columns path,count"),
    (b"path,count\n\xff\xfe\x00a,1\n", "not a text CSV file"),
])
def test_unreadable_csv_is_one_line(tmp_path, content, problem):
    (tmp_path / "labels.csv").write_bytes(content)
    assert_one_line_error(run_cli("data", "index", tmp_path / "labels.csv", "--out", tmp_path / "m.parquet"),
                          str(tmp_path / "labels.csv"), problem)


def test_csv_rows_pointing_nowhere_are_unusable_rows(bucket):
    lines = ["path,count", "bin-images/00100.jpg,1", "gone/00999.jpg,2", "bad\x00name.jpg,1", "bin-images,3", ",4"]
    (bucket / "labels.csv").write_text("\n".join(lines) + "\n")
    df = build_manifest(bucket / "labels.csv", progress=False)
    assert df["status"].tolist() == ["ok", "missing: no such file", "missing: no such file",
                                     "unreadable: is a folder, not a regular file", "bad-row: no path"]
    assert df["path"].iloc[-1] == f"{bucket / 'labels.csv'}:6"


def test_read_or_index_reports_each_unusable_photo(bucket, caplog):
    (bucket / "bin-images" / "00104.jpg").write_text("not a photo")
    (bucket / "metadata" / "00105.json").unlink()
    with caplog.at_level(logging.WARNING, logger="bintally.data"):
        df = read_or_index(bucket, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "bintally.data"]
    assert f"{bucket.resolve() / 'bin-images' / '00104.jpg'}: corrupt: not an image (or a format PIL cannot read)" in lines
    assert f"{bucket.resolve() / 'bin-images' / '00105.jpg'}: missing-metadata: no metadata/00105.json" in lines
    assert lines[-1].startswith("10 usable photos, 2 unusable") and len(lines) == 3
    assert (df["status"] != "ok").sum() == 2


@pytest.mark.parametrize("metadata, problem", [
    ("[1, 2]", "expected a JSON object with EXPECTED_QUANTITY, found a list"),
    ('{"EXPECTED_QUANTITY": 1.5}', "count is not an integer: 1.5"),
    ('{"EXPECTED_QUANTITY": "abc"}', "count is not an integer: 'abc'"),
    ('{"EXPECTED_QUANTITY": -1}', "count is negative: -1"),
    ('{"EXPECTED_QUANTITY": 1e30}', "count is implausibly large"),
    (None, "is a folder"),
])
def test_bad_metadata_marks_only_its_photo(bucket, tmp_path, metadata, problem):
    meta = bucket / "metadata" / "00106.json"
    meta.unlink()
    meta.mkdir() if metadata is None else meta.write_text(metadata)
    result = run_cli("data", "index", bucket, "--out", tmp_path / "m.parquet", "--no-progress")
    assert result.returncode == 0 and "11 usable photos, 1 unusable" in result.stdout, result.stderr
    assert "00106.jpg: bad-metadata: " in result.stderr and problem in result.stderr
    df = read_manifest(tmp_path / "m.parquet").set_index("id")
    assert pd.isna(df.loc["00106", "count"]) and (df.drop("00106")["status"] == "ok").all()


def test_symlink_loops_and_broken_links_are_unusable_rows(bucket):
    images = bucket / "bin-images"
    os.symlink("loop.jpg", images / "loop.jpg")
    os.symlink(images / "nowhere.jpg", images / "broken.jpg")
    df = build_manifest(bucket, progress=False).set_index("id")
    assert df.loc["loop", "status"] == df.loc["broken", "status"] == "missing: broken or looping link"
    assert (df.drop(["loop", "broken"])["status"] == "ok").all()


def test_index_of_a_manifest_says_what_it_is(manifest, tmp_path):
    assert_one_line_error(run_cli("data", "index", manifest, "--out", tmp_path / "new.parquet"),
                          str(manifest), "is a manifest already")


def test_ids_file_with_junk_is_one_line(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("\ufeff00100\n00101.jpg\n")
    assert_one_line_error(run_cli("data", "fetch", "--ids-file", ids, "--out", tmp_path / "abid"),
                          str(ids), "line 2", "'00101.jpg'")


# ---------------------------------------------------------------- index --out: checked before any work


@pytest.mark.parametrize("out, problem", [
    ("/proc/bintally/m.parquet", "cannot write here"),
    ("folder.parquet", "is a folder"),
    ("m.csv", "unsupported file type '.csv'"),
])
def test_index_out_is_checked_before_indexing(bucket, tmp_path, out, problem):
    out = tmp_path / out if not out.startswith("/") else Path(out)
    if out.name == "folder.parquet":
        out.mkdir()
    assert_one_line_error(run_cli("data", "index", bucket, "--out", out), str(out), problem)
    with pytest.raises(DataError, match=problem):  # the library checks first too: the missing source is not reached
        index_to_manifest(tmp_path / "nowhere", out, progress=False)


def test_index_refuses_to_replace_a_manifest(manifest, bucket):
    before = manifest.read_bytes()
    assert_one_line_error(run_cli("data", "index", bucket, "--out", manifest), str(manifest), "--overwrite")
    assert manifest.read_bytes() == before


# ---------------------------------------------------------------- decompression bombs and huge photos


def test_decompression_bomb_is_an_unusable_row_naming_the_file(bucket, tmp_path):
    (bucket / "bin-images" / "00107.jpg").unlink()
    bomb = bucket / "bin-images" / "00107.png"
    bomb.write_bytes(png_bomb(30000, 30000))
    with Image.open(bomb) as img:
        assert img.size == (30000, 30000)
    result = run_cli("data", "index", bucket, "--out", tmp_path / "m.parquet", "--no-progress")
    assert result.returncode == 0 and "11 usable photos, 1 unusable" in result.stdout
    line = next(line for line in result.stderr.splitlines() if "00107" in line)
    assert line.startswith(f"skipped {bomb.resolve()}: ") and "image too large: 30000x30000 pixels" in line


def test_huge_jpeg_is_indexed_in_draft_mode_with_its_true_size(mirror, bucket):
    with Image.open(mirror / "bin-images" / "00108.jpg") as img:
        img.convert("L").resize((12000, 12000), Image.Resampling.NEAREST).save(bucket / "bin-images" / "00108.jpg", quality=60)
    row = build_manifest(bucket, progress=False).set_index("id").loc["00108"]
    assert row["status"] == "ok" and (row["width"], row["height"]) == (12000, 12000)
    assert len(row["phash"]) == 16


# ---------------------------------------------------------------- report


def test_report_of_a_manifest_with_no_usable_photo(manifest, tmp_path):
    df = read_manifest(manifest)
    df["status"] = "corrupt: not an image"
    write_manifest(df, manifest, info=df.attrs["info"])
    with pytest.raises(DataError, match="no usable photos to report on"):
        write_report(read_manifest(manifest), tmp_path / "report")
    assert_one_line_error(run_cli("data", "report", manifest, "--out", tmp_path / "report"), str(manifest), "no usable photos")
    assert not (tmp_path / "report" / "index.html").exists()


def test_report_skips_photos_deleted_since_indexing(bucket, manifest, tmp_path):
    for i in range(100, 106):
        (bucket / "bin-images" / f"{i:05d}.jpg").unlink()
    result = run_cli("data", "report", manifest, "--out", tmp_path / "report")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    with Image.open(tmp_path / "report" / "sample_grid.png") as grid:
        assert grid.size[0] > 300


# ---------------------------------------------------------------- stopping an index run: signals and kill -9


@pytest.fixture(scope="module")
def stopped_runs(mirror, tmp_path_factory) -> dict:
    """Index the whole mirror (so the pool is used) in three process groups at once; ~2 s after each one's workers
    start, send SIGINT or SIGTERM to its group, or kill -9 its parent alone."""
    folder = tmp_path_factory.mktemp("stopped")
    runs = {}
    for how in ("SIGINT", "SIGTERM", "SIGKILL"):
        out, err = folder / f"{how}.parquet", folder / f"{how}.stderr"
        with open(err, "w") as stderr:  # a file, not a pipe: a worker that outlives its parent must not hang the test
            proc = subprocess.Popen([sys.executable, "-m", "bintally", "data", "index", mirror, "--out", out,
                                     "--no-progress", "--workers", "2"], stdout=stderr, stderr=stderr, start_new_session=True)
        runs[how] = dict(proc=proc, out=out, err=err)
    for run in runs.values():
        pid = run["proc"].pid
        assert wait_for(lambda pid=pid: len(process_group(pid)) >= 3, 120), "the workers never started"
    time.sleep(2)
    for how, run in runs.items():
        if how == "SIGKILL":
            os.kill(run["proc"].pid, signal.SIGKILL)
        else:
            os.killpg(run["proc"].pid, getattr(signal, how))
    for run in runs.values():
        pid = run["proc"].pid
        try:
            run["returncode"] = run["proc"].wait(timeout=60)
        except subprocess.TimeoutExpired:
            run["returncode"] = None
        wait_for(lambda pid=pid: not process_group(pid), 10)
        run["left"], run["stderr"] = list(process_group(pid)), run["err"].read_text()
    yield runs
    for run in runs.values():
        if process_group(run["proc"].pid):
            os.killpg(run["proc"].pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_signal_to_the_group_stops_indexing_cleanly(stopped_runs, how):
    run = stopped_runs[how]
    assert run["returncode"] == 130, run["stderr"]
    assert_one_line_error(subprocess.CompletedProcess([], 130, "", run["stderr"]), "stopped by SIG", "none is left half-written", code=130)
    assert run["left"] == [], "pool workers outlived the indexer"
    assert not run["out"].exists() and list(run["out"].parent.glob(f".{run['out'].name}*")) == []


def test_kill_9_of_the_indexer_leaves_no_workers(stopped_runs):
    run = stopped_runs["SIGKILL"]
    assert run["returncode"] == -signal.SIGKILL
    assert run["left"] == [], "pool workers outlived the indexer"
    assert not run["out"].exists()
