"""The `bintally data` commands as a user runs them: the real entry point, real files, exit codes."""

from __future__ import annotations

import json

import numpy as np

from bintally.data import read_manifest, write_manifest
from bintally.labels import LabelSpace
from tests.cli_helpers import assert_one_line_error, run_cli


def test_index_split_check_report(small_bucket, tmp_path):
    manifest = tmp_path / "m.parquet"
    run = run_cli("data", "index", small_bucket, "--out", manifest)
    assert run.returncode == 0, run.stderr
    assert "30 usable photos, 0 unusable" in run.stdout
    run = run_cli("data", "split", manifest, "--fractions", "0.6,0.2,0.2")
    assert run.returncode == 0, run.stderr
    assert set(read_manifest(manifest)["split"]) <= {"train", "val", "test"}
    run = run_cli("data", "check", manifest, "--json", tmp_path / "check.json")
    assert run.returncode == 0, run.stdout
    assert "no leakage across splits" in run.stdout
    assert json.loads((tmp_path / "check.json").read_text())["n_leaks"] == 0
    run = run_cli("data", "report", manifest, "--out", tmp_path / "report")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "report" / "index.html").exists()


def test_check_exits_nonzero_on_leakage(small_bucket, tmp_path):
    manifest = tmp_path / "m.parquet"
    assert run_cli("data", "index", small_bucket, "--out", manifest).returncode == 0
    df = read_manifest(manifest)
    df = df.loc[np.repeat(df.index[:2], 2)].reset_index(drop=True)  # each photo twice
    df["split"] = ["train", "test", "train", "val"]
    df["label"] = LabelSpace().label_of(df["count"])
    write_manifest(df, manifest)
    run = run_cli("data", "check", manifest)
    assert run.returncode == 1
    assert "LEAKAGE" in run.stdout and "exact duplicate groups (same sha256): 2" in run.stdout


def test_bad_input_gets_one_line_error(tmp_path):
    out = ("--out", tmp_path / "new.parquet")
    assert_one_line_error(run_cli("data", "index", tmp_path / "nowhere", *out), f"{tmp_path / 'nowhere'}: no such file or folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("data", "index", tmp_path / "empty", *out), f"{tmp_path / 'empty'}: folder is empty")
    (tmp_path / "labels.csv").write_text("file,n\n")
    assert_one_line_error(run_cli("data", "index", tmp_path / "labels.csv", *out), "labels.csv: CSV needs columns path,count")
    (tmp_path / "m.parquet").write_text("not parquet")
    assert_one_line_error(run_cli("data", "check", tmp_path / "m.parquet"), "m.parquet: not a readable Parquet manifest")
    assert_one_line_error(run_cli("data", "split", tmp_path / "m.parquet"), "m.parquet: not a readable Parquet manifest")
    assert not (tmp_path / "new.parquet").exists()


def test_commands_default_to_the_bundled_sample():
    run = run_cli("data", "check")
    assert run.returncode == 0, run.stderr
    assert "using the bundled sample" in run.stderr
    assert "no leakage across splits" in run.stdout
