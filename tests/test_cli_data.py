"""The `bintally data` commands as a user runs them: real processes, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from bintally.data import read_manifest, write_manifest


def bintally(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bintally", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_index_split_check_report(small_bucket, tmp_path):
    manifest = tmp_path / "m.parquet"
    run = bintally("data", "index", small_bucket, "--out", manifest)
    assert run.returncode == 0, run.stderr
    assert "30 usable photos, 0 unusable" in run.stdout
    run = bintally("data", "split", manifest, "--fractions", "0.6,0.2,0.2")
    assert run.returncode == 0, run.stderr
    assert set(read_manifest(manifest)["split"]) <= {"train", "val", "test"}
    run = bintally("data", "check", manifest, "--json", tmp_path / "check.json")
    assert run.returncode == 0, run.stdout
    assert "no leakage across splits" in run.stdout
    assert json.loads((tmp_path / "check.json").read_text())["n_leaks"] == 0
    run = bintally("data", "report", manifest, "--out", tmp_path / "report")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "report" / "index.html").exists()


def test_check_exits_nonzero_on_leakage(small_bucket, tmp_path):
    manifest = tmp_path / "m.parquet"
    assert bintally("data", "index", small_bucket, "--out", manifest).returncode == 0
    df = read_manifest(manifest)
    df = df.loc[np.repeat(df.index[:2], 2)].reset_index(drop=True)  # each photo twice
    df["split"] = ["train", "test", "train", "val"]
    df["label"] = df["count"]
    write_manifest(df, manifest)
    run = bintally("data", "check", manifest)
    assert run.returncode == 1
    assert "LEAKAGE" in run.stdout and "exact duplicate groups (same sha256): 2" in run.stdout


def one_line_error(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, (run.stdout, run.stderr)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    return lines[0]


def test_bad_input_gets_one_line_error(tmp_path):
    assert one_line_error(bintally("data", "index", tmp_path / "nowhere")).endswith("nowhere: no such file or folder")
    (tmp_path / "empty").mkdir()
    assert one_line_error(bintally("data", "index", tmp_path / "empty")).endswith("empty: folder is empty")
    (tmp_path / "labels.csv").write_text("file,n\n")
    assert "labels.csv: CSV needs columns path,count" in one_line_error(bintally("data", "index", tmp_path / "labels.csv"))
    (tmp_path / "m.parquet").write_text("not parquet")
    assert "m.parquet: not a readable Parquet manifest" in one_line_error(bintally("data", "check", tmp_path / "m.parquet"))
    (tmp_path / "fl.json").write_text("[1, 2")
    err = one_line_error(bintally("data", "split", tmp_path / "m.parquet"))
    assert "m.parquet" in err


def test_commands_default_to_the_bundled_sample(tmp_path):
    run = bintally("data", "check")
    assert run.returncode == 0, run.stderr
    assert "using the bundled sample" in run.stderr
    assert "no leakage across splits" in run.stdout
