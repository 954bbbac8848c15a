"""Training under preemption and misuse: process-group signals with loader workers, locked and never-clobbered
run directories, finished runs, leftovers of kill -9, failed starts, photos that vanish or break mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bintally.data import write_manifest
from bintally.data.manifest import read_manifest
from bintally.errors import ConfigError
from bintally.models.artifact import read_artifact
from bintally.training import train
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.helpers import process_group, wait_for
from tests.training_helpers import TINY, assert_same_weights, state_of, tiny_config

TINY_FLAGS = ["--backbone", TINY["backbone"], "--random-init", "--image-size", "64", "--batch-size", "16",
              "--lr", "3e-3", "--warmup-epochs", "0.2", "--no-channels-last", "--no-progress"]


def train_process(*args, cwd=None) -> subprocess.Popen:
    """`bintally train` as the leader of its own process group, as systemd, Slurm or a shell job would start it."""
    return subprocess.Popen([sys.executable, "-m", "bintally", "train", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=cwd)


def run_files(out: Path) -> dict:
    """What a run holds for its user (the lock file only names the process working on it)."""
    return {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}


def copied_manifest(manifest: Path, dest: Path) -> Path:
    """The manifest with its photos copied into `dest`, so that a test may delete or damage them."""
    df = read_manifest(manifest)
    (dest / "photos").mkdir(parents=True)
    df["path"] = [str(shutil.copy(p, dest / "photos" / Path(p).name)) for p in df["path"]]
    write_manifest(df, dest / "m.parquet", info=df.attrs["info"])
    return dest / "m.parquet"


@pytest.mark.slow
@pytest.mark.parametrize("sig, workers", [(signal.SIGTERM, 2), (signal.SIGINT, 1)])
def test_group_signal_with_loader_workers_checkpoints_and_resume_matches(tiny_manifest, tmp_path, two_epoch_run, sig, workers):
    run = tmp_path / "killed"
    proc = train_process("--data", tiny_manifest, "--out", run, "--epochs", 2, "--workers", workers, *TINY_FLAGS)
    assert wait_for((run / "metrics.jsonl").exists, 180), "no epoch finished"  # one epoch done: the loader workers are busy with the second
    time.sleep(0.3)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped by signal" in err and f"bintally train --resume {run}" in err and "Traceback" not in err
    time.sleep(0.5)
    assert list(process_group(proc.pid)) == []  # no loader worker left behind
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["global_step"] >= 10

    resumed = run_cli("train", "--resume", run, "--workers", workers, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(state_of(two_epoch_run), state_of(run))


def test_a_run_directory_is_never_clobbered(tiny_manifest, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_manifest, out, max_steps=2, epochs=1))
    before = run_files(out)
    result = run_cli("train", "--data", tiny_manifest, "--out", out, "--max-steps", 1, *TINY_FLAGS)
    line = assert_one_line_error(result, str(out), "already holds a run", "--resume", "--overwrite")
    assert "finished" in line
    assert run_files(out) == before

    (out / "notes.txt").write_text("mine")
    replaced = run_cli("train", "--data", tiny_manifest, "--out", out, "--max-steps", 1, "--overwrite", *TINY_FLAGS)
    assert replaced.returncode == 0, replaced.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]  # only the new run's metrics
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite deletes the run's files, nothing else


def test_without_out_each_run_gets_a_new_numbered_directory(tiny_manifest, tmp_path):
    for _ in range(2):
        result = run_cli("train", "--data", tiny_manifest, "--max-steps", 1, "--epochs", 1, *TINY_FLAGS)
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (Path.cwd() / "runs" / "train").iterdir()) == ["run-001", "run-002"]


@pytest.fixture(autouse=True)
def in_tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_a_second_process_on_the_same_run_is_refused_naming_the_holder(tiny_manifest, tmp_path):
    out = tmp_path / "shared"
    first = train_process("--data", tiny_manifest, "--out", out, "--epochs", 30, "--workers", 0, *TINY_FLAGS)
    assert wait_for((out / "config.json").exists, 180), "the run never started"
    # the second process is this one (no new interpreter: the lock is per process all the same)
    second = run_cli("train", "--data", tiny_manifest, "--out", out, "--epochs", 30, "--workers", 0, *TINY_FLAGS)
    assert_one_line_error(second, str(out), "another bintally train is using this run", f"pid {first.pid}")
    resume = run_cli("train", "--resume", out, "--no-progress")
    assert_one_line_error(resume, f"pid {first.pid}")
    os.killpg(first.pid, signal.SIGTERM)
    assert first.wait(timeout=120) == 130
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 30 and config["workers"] == 0  # the first run's, untouched


def test_resume_of_a_finished_run_changes_nothing_and_more_epochs_continue(tiny_manifest, tmp_path):
    out = tmp_path / "done"
    train(tiny_config(tiny_manifest, out, epochs=1))
    before = run_files(out)
    again = run_cli("train", "--resume", out, "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stdout
    assert run_files(out) == before

    longer = train(tiny_config(tiny_manifest, out, epochs=2), resume=str(out), explicit={"epochs": 2})
    assert not longer.already_finished
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    with pytest.raises(ConfigError, match="may add epochs, not remove them"):
        train(tiny_config(tiny_manifest, out), resume=str(out), explicit={"epochs": 1})


# RUN/config.json as `bintally train` wrote it before its config held a ModelConfig: the model's settings flat, overflow a word
FLAT_CONFIG = {"data": None, "out": None, "preset": None, "backbone": "test_efficientnet_gn", "head": "ordinal", "features": "pooled",
               "min_count": 0, "max_count": 5, "overflow": "class", "pretrained": False, "weights": None, "init": None, "dropout": 0.2,
               "decode": "auto", "mode": "full", "unfreeze": 2, "image_size": 64, "epochs": 2, "batch_size": 16, "optimizer": "adamw",
               "lr": 0.003, "backbone_lr_scale": 0.3, "weight_decay": 0.02, "momentum": 0.9, "schedule": "cosine", "warmup_epochs": 0.2,
               "restart_epochs": 2, "step_epochs": 2, "step_gamma": 0.3, "label_smoothing": 0.1, "balance": "none", "ema": 0.0,
               "select": "best", "folds": 0, "amp": None, "channels_last": False, "compile": False, "tta": True, "workers": 0,
               "device": "auto", "seed": 0, "max_steps": 1, "profile": False, "progress": False}


def test_a_run_with_a_flat_config_json_resumes_and_keeps_its_format(tiny_manifest, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_manifest, out, max_steps=1, epochs=2))
    flat = FLAT_CONFIG | {"data": str(tiny_manifest), "out": str(out)}
    (out / "config.json").write_text(json.dumps(flat, indent=2))
    refused = run_cli("train", "--resume", out, "--max-count", "3", "--overflow", "exclude", "--dropout", "0.5")
    assert_one_line_error(refused, "max_count: run has 5, you asked for 3", "overflow: run has 'class', you asked for 'exclude'",
                          "dropout: run has 0.2, you asked for 0.5")
    resumed = train(tiny_config(tiny_manifest, out), resume=str(out), explicit={})
    assert resumed.epochs_done == 2 and not resumed.already_finished
    assert json.loads((out / "config.json").read_text()) == flat | {"max_steps": None}
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["config"] == flat | {"max_steps": None}
    assert read_artifact(out / "model").train_config == flat | {"max_steps": None}


def test_leftovers_of_a_killed_writer_are_removed_on_resume(tiny_manifest, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_manifest, out, max_steps=2, epochs=2))
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is gone: what it "wrote" is a leftover
    leftovers = [out / "checkpoints" / f".last.pt.{dead.pid}.0123abcd.tmp", out / "model" / f".model.json.{dead.pid}.89abcdef.tmp",
                 out / "model" / f".weights-0123456789ab.safetensors.{dead.pid}.456789ab.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    train(tiny_config(tiny_manifest, out, epochs=2), resume=str(out))
    assert not any(p.exists() for p in leftovers)
    assert not list(out.rglob("*.tmp"))


def test_a_failed_start_leaves_nothing_that_looks_like_a_run(tiny_manifest, tmp_path):
    df = read_manifest(tiny_manifest)
    write_manifest(df[df["label"] != 3], tmp_path / "no3.parquet", info=df.attrs["info"])
    result = run_cli("train", "--data", tmp_path / "no3.parquet", "--out", tmp_path / "new", *TINY_FLAGS)
    assert_one_line_error(result, "class(es) 3 have no training examples")
    assert not (tmp_path / "new").exists()
    result = run_cli("train", "--data", tmp_path / "no3.parquet", *TINY_FLAGS)
    assert result.returncode == 2 and not (tmp_path / "runs" / "train" / "run-001").exists()
    flags = TINY_FLAGS[:5] + TINY_FLAGS[7:]  # without its --batch-size 16
    result = run_cli("train", "--data", tiny_manifest, "--out", tmp_path / "big", "--batch-size", 1000, *flags)
    assert_one_line_error(result, "batch size 1000 is larger than the train split")
    assert not (tmp_path / "big").exists()


def test_bad_settings_files_and_runs_get_one_line(tiny_manifest, tmp_path):
    (tmp_path / "wrong-type.json").write_text(json.dumps({"lr": "fast"}))
    assert_one_line_error(run_cli("train", "--config", tmp_path / "wrong-type.json"), "wrong-type.json", "lr", "'fast'")
    (tmp_path / "range.json").write_text(json.dumps({"workers": -1}))
    assert_one_line_error(run_cli("train", "--config", tmp_path / "range.json"), "range.json", "workers")
    (tmp_path / "list.json").write_text("[1, 2]")
    assert_one_line_error(run_cli("train", "--config", tmp_path / "list.json"), "list.json", "JSON object")

    out = tmp_path / "run"
    train(tiny_config(tiny_manifest, out, max_steps=1, epochs=2))
    (out / "config.json").write_text("{not json")
    assert_one_line_error(run_cli("train", "--resume", out), "config.json", "malformed JSON")
    (out / "config.json").unlink()
    assert_one_line_error(run_cli("train", "--resume", out), "config.json", "missing")
    assert (out / "checkpoints" / "last.pt").exists() and (out / "model" / "model.json").exists()  # nothing was lost
    assert_one_line_error(run_cli("train", "--resume", out / "model" / "model.json"), "model.json", "is a file", "run directory")
    for bad in (["--workers", "-1"], ["--epochs", "0"], ["--mode", "fast"], ["--preset", "nope"], ["--image-size", "abc"],
                ["--lr", "-1"], ["--label-smoothing", "1.5"]):
        assert_one_line_error(run_cli("train", *bad), bad[0], code=2)


def test_photos_that_vanish_or_break_are_reported_and_skipped(tiny_manifest, tmp_path):
    manifest = copied_manifest(tiny_manifest, tmp_path / "data")
    df = read_manifest(manifest)
    train_paths = df[df["split"] == "train"]["path"].tolist()
    Path(train_paths[0]).unlink()  # gone since indexing: found before training starts
    size = Path(train_paths[1]).stat().st_size
    Path(train_paths[1]).write_bytes(b"\0" * size)  # same size, not an image any more: found while loading
    result = run_cli("train", "--data", manifest, "--out", tmp_path / "run", "--epochs", 1, "--workers", 0, *TINY_FLAGS)
    assert result.returncode == 0, result.stderr
    assert f"{train_paths[0]}: missing since indexing (skipped)" in result.stderr
    assert "1 photo(s)" in result.stderr
    assert sum(train_paths[1] in line and "skipped" in line for line in result.stderr.splitlines()) >= 1
    assert "Traceback" not in result.stderr
    assert json.loads((tmp_path / "run" / "result.json").read_text())["final"]["val_n"] == 56


def test_labels_1_to_5_from_a_file_list_train_end_to_end(tiny_manifest, tmp_path):
    df = read_manifest(tiny_manifest)
    listed = df[(df["count"] >= 1) & (df["count"] <= 5)]
    file_list = {str(c): [f"metadata/{i}.json" for i in g["id"]] for c, g in listed.groupby("count")}
    (tmp_path / "file_list.json").write_text(json.dumps(file_list))
    unsplit = df.drop(columns=["split", "label"])
    write_manifest(unsplit, tmp_path / "m.parquet", info={"source": "sample"})
    split = run_cli("data", "split", tmp_path / "m.parquet", "--file-list", tmp_path / "file_list.json", "--fractions", "0.7,0.3,0")
    assert split.returncode == 0, split.stderr
    result = train(tiny_config(tmp_path / "m.parquet", tmp_path / "run", epochs=1))
    assert result.labels.names == ["1", "2", "3", "4", "5"]
    assert result.model.config.n_classes == 5
    saved = read_artifact(tmp_path / "run")
    assert saved.labels.names == ["1", "2", "3", "4", "5"] and saved.to_json()["labels"]["names"] == ["1", "2", "3", "4", "5"]
    assert pd.Series(read_manifest(tmp_path / "m.parquet")["label"]).dropna().between(0, 4).all()
    with pytest.raises(ConfigError, match="batch size 10000"):
        train(tiny_config(tmp_path / "m.parquet", tmp_path / "run2", min_count=1, max_count=5, overflow="exclude", batch_size=10_000))
