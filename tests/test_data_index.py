"""Indexing real photos in every layout, and the bad input it must survive."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import pandas as pd
import pytest
from PIL import Image

from bintally.data import DataError, build_manifest, index_to_manifest, read_manifest
from bintally.data.metadata import read_metadata


def provenance_sha256(mirror) -> dict[str, str]:
    with open(mirror / "provenance.csv") as f:
        return {row["abid_id"]: row["sha256"] for row in csv.DictReader(f)}


def test_bucket_layout_records_real_facts(small_bucket, mirror):
    df = build_manifest(small_bucket, progress=False)
    assert len(df) == 30 and (df["status"] == "ok").all()
    assert {"00100", "100"} <= set(df["id"])  # ids stay text
    assert df.loc[df["id"] == "00100", "path"].item() != df.loc[df["id"] == "100", "path"].item()
    known = provenance_sha256(mirror)
    assert all(df["sha256"] == df["id"].map(known))
    for row in df.sample(5, random_state=0).itertuples():
        meta = json.loads((mirror / "metadata" / f"{row.id}.json").read_text())
        assert row.count == meta["EXPECTED_QUANTITY"]
        assert row.n_asins == len(meta.get("BIN_FCSKU_DATA", {}))
        with Image.open(row.path) as img:
            assert (row.width, row.height) == img.size
    assert df["phash"].str.fullmatch(r"[0-9a-f]{16}").all()


def test_manifest_round_trip_keeps_ids_as_text(small_bucket, tmp_path):
    out = tmp_path / "m.parquet"
    written = index_to_manifest(small_bucket, out, progress=False)
    read = read_manifest(out)
    assert read["id"].tolist() == written["id"].tolist()
    assert read["id"].dtype == "string"
    assert read.attrs["info"]["layout"] == "bucket"


def test_corrupt_files_are_reported_and_excluded(small_bucket):
    images = small_bucket / "bin-images"
    data = (images / "00101.jpg").read_bytes()
    (images / "00101.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (images / "00102.jpg").write_text("this is not a photo")
    (images / "00103.jpg").write_bytes(b"")
    df = build_manifest(small_bucket, progress=False).set_index("id")
    assert df.loc["00101", "status"].startswith("corrupt: corrupt image")
    assert df.loc["00102", "status"].startswith("corrupt: not an image")
    assert df.loc["00103", "status"] == "corrupt: empty file"
    assert (df.drop(["00101", "00102", "00103"])["status"] == "ok").all()


@pytest.mark.parametrize(
    "content, reason",
    [
        ("{not json", "malformed JSON"),
        (json.dumps({"BIN_FCSKU_DATA": {}}), "no EXPECTED_QUANTITY"),
        (json.dumps({"EXPECTED_QUANTITY": "three"}), "count is not an integer: 'three'"),
        (json.dumps({"EXPECTED_QUANTITY": 2.5}), "count is not an integer: 2.5"),
    ],
)
def test_bad_metadata_marks_only_that_photo(small_bucket, content, reason):
    (small_bucket / "metadata" / "00104.json").write_text(content)
    df = build_manifest(small_bucket, progress=False).set_index("id")
    assert df.loc["00104", "status"].startswith("bad-metadata:")
    assert reason in df.loc["00104", "status"]
    assert pd.isna(df.loc["00104", "count"])
    assert (df.drop("00104")["status"] == "ok").all()
    with pytest.raises(DataError, match="00104.json: "):
        read_metadata(small_bucket / "metadata" / "00104.json")


def test_missing_metadata(small_bucket):
    (small_bucket / "metadata" / "00105.json").unlink()
    df = build_manifest(small_bucket, progress=False).set_index("id")
    assert df.loc["00105", "status"].startswith("missing-metadata")


def test_class_folder_layout(small_bucket, tmp_path):
    root = tmp_path / "classes"
    src = build_manifest(small_bucket, progress=False)
    for row in src.itertuples():
        (root / str(row.count)).mkdir(parents=True, exist_ok=True)
        shutil.copy(row.path, root / str(row.count) / f"{row.id}.jpg")
    (root / "lots").mkdir()
    shutil.copy(src["path"][0], root / "lots" / "x.jpg")
    df = build_manifest(root, progress=False)
    good = df[df["status"] == "ok"].set_index("id")
    assert good["count"].to_dict() == src.set_index("id")["count"].to_dict()
    assert df.loc[df["id"] == "x", "status"].item().startswith("bad-label: folder name 'lots'")


def test_csv_layout(small_bucket, tmp_path):
    csv_path = small_bucket / "labels.csv"
    rows = ["path,count", "bin-images/00100.jpg,3", "bin-images/00101.jpg,x", "bin-images/100.jpg,0"]
    csv_path.write_text("\n".join(rows) + "\n")
    df = build_manifest(csv_path, progress=False).set_index("id")
    assert df.loc["00100", "count"] == 3 and df.loc["100", "count"] == 0
    assert df.loc["00101", "status"] == "bad-label: line 3: count is not an integer: 'x'"


def test_csv_without_required_columns(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("file,n\na.jpg,1\n")
    with pytest.raises(DataError, match=r"labels.csv: CSV needs columns path,count"):
        build_manifest(bad, progress=False)


def test_structural_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="nowhere: no such file or folder"):
        build_manifest(tmp_path / "nowhere", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: folder is empty; bintally reads a bucket folder"):
        build_manifest(tmp_path / "empty", progress=False)
    (tmp_path / "docs" / "3").mkdir(parents=True)
    (tmp_path / "docs" / "3" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="docs: no images found"):
        build_manifest(tmp_path / "docs", progress=False)


def test_read_manifest_rejects_non_parquet(tmp_path):
    fake = tmp_path / "m.parquet"
    fake.write_text("hello")
    with pytest.raises(DataError, match="not a readable Parquet manifest"):
        read_manifest(fake)


def test_failed_index_keeps_existing_manifest(small_bucket, tmp_path):
    out = tmp_path / "m.parquet"
    index_to_manifest(small_bucket, out, progress=False)
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    with pytest.raises(DataError):
        index_to_manifest(tmp_path / "nowhere", out, progress=False)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before
    assert list(tmp_path.glob(".m.parquet.*")) == []
