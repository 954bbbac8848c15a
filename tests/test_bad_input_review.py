"""Bad input found by a review as a new user: each class is one line, exit 2, nothing written or lost."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from bintally.data import read_manifest
from bintally.errors import ConfigError, DataError
from bintally.evaluation.metrics import bootstrap_intervals
from bintally.io import check_output_file, check_output_folder
from bintally.labels import LabelSpace
from bintally.training import TrainConfig, train
from bintally.training.data import check_training_data
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.training_helpers import tiny_config

TRAIN = ["train", "--backbone", "test_efficientnet_gn", "--random-init", "--image-size", "64", "--batch-size", "16",
         "--max-steps", "1", "--epochs", "1", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def run(tiny_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("review") / "run"
    train(tiny_config(tiny_manifest, out, max_steps=1, epochs=1))
    return out


def copy_run(run, dest):
    shutil.copytree(run, dest)
    return dest


# ---------------------------------------------------------------- NaN, inf and out-of-range numbers in settings


@pytest.mark.parametrize("flag, value, name", [("--warmup-epochs", "inf", "warmup_epochs"),  # was an OverflowError
                                               ("--weight-decay", "inf", "weight_decay"),  # trained silently
                                               ("--backbone-lr-scale", "inf", "backbone_lr_scale"),
                                               ("--lr", "nan", "lr")])
def test_non_finite_numbers_are_refused_by_name(tmp_path, flag, value, name):
    result = run_cli(*TRAIN, flag, value, "--out", tmp_path / "run")
    assert_one_line_error(result, f"--{name.replace('_', '-')}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, name", [('{"lr": NaN}', "lr"), ('{"weight_decay": Infinity}', "weight_decay"),
                                        ('{"ema": NaN}', "ema")])
def test_non_finite_numbers_in_a_config_file_name_the_file_and_setting(tmp_path, text, name):
    config = tmp_path / "settings.json"
    config.write_text(text)
    result = run_cli(*TRAIN, "--config", config, "--out", tmp_path / "run")
    assert_one_line_error(result, str(config), name)
    assert not (tmp_path / "run").exists()


def test_non_finite_numbers_from_python_are_a_config_error():
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConfigError, match="lr"):
            TrainConfig(lr=value)
    with pytest.raises(ConfigError, match="dropout"):
        TrainConfig.from_dict({"dropout": math.nan})


def test_seed_beyond_what_random_generators_take_is_refused(tmp_path):
    result = run_cli(*TRAIN, "--seed", str(2**64), "--out", tmp_path / "run")  # was a ValueError from torch
    assert_one_line_error(result, "seed", "4294967295")
    TrainConfig(seed=2**32 - 1)


def test_bootstrap_size_is_bounded_before_any_work(run, tiny_manifest, tmp_path):
    result = run_cli("evaluate", "--model", run, "--data", tiny_manifest, "--split", "val", "--no-progress",
                     "--workers", "0", "--bootstrap", "100000000", "--json", tmp_path / "m.json")  # was a MemoryError
    assert_one_line_error(result, "--bootstrap", "100000")
    assert not (tmp_path / "m.json").exists()
    with pytest.raises(ConfigError, match="bootstrap"):
        bootstrap_intervals([1, 2], [1, 2], resamples=0)


def test_bootstrap_memory_is_bounded_and_default_results_unchanged(monkeypatch):
    import bintally.evaluation.metrics as metrics

    rng = np.random.default_rng(1)
    true, pred = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
    whole = bootstrap_intervals(true, pred, resamples=200)
    monkeypatch.setattr(metrics, "DRAWS_PER_CHUNK", 300 * 7)  # chunks of 7 resamples
    chunked = bootstrap_intervals(true, pred, resamples=200)
    assert whole.keys() == chunked.keys()
    for k in whole:  # the same interval, up to the resampling noise of 200 draws
        assert abs(whole[k][0] - chunked[k][0]) < 0.2 and abs(whole[k][1] - chunked[k][1]) < 0.2


# ---------------------------------------------------------------- '' as a path silently meant the current folder


@pytest.mark.parametrize("args, option", [
    (TRAIN + ["--out", ""], "after --out"),  # trained into the current folder
    (TRAIN + ["--out="], "in --out="),
    (["data", "report", "{manifest}", "--out", ""], "after --out"),  # wrote the report into the current folder
    (["evaluate", "--model", "{run}", "--data", "{manifest}", "--report", ""], "after --report"),
    (["data", "fetch", "--ids", "00523", "--out", ""], "after --out"),  # downloaded into the current folder
    (["data", "index", "", "--out", "{tmp}/m.parquet"], "after index"),  # indexed the current folder
])
def test_empty_path_is_refused_and_nothing_lands_in_the_current_folder(run, tiny_manifest, tmp_path, monkeypatch, args, option):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    args = [a.format(manifest=tiny_manifest, run=run, tmp=tmp_path) for a in args]
    assert_one_line_error(run_cli(*args), "empty argument ''", option)
    assert list(cwd.iterdir()) == []


def test_empty_paths_from_python_are_refused():
    with pytest.raises(DataError, match="empty"):
        check_output_folder("")
    with pytest.raises(DataError, match="empty"):
        check_output_file("  ", (".json",))
    with pytest.raises(DataError, match="empty"):
        read_manifest("")
    for name in ("data", "out", "weights"):
        with pytest.raises(ConfigError, match=name):
            TrainConfig.from_dict({name: ""})


def test_empty_photo_argument_to_predict(run):
    assert_one_line_error(run_cli("predict", "--model", run, "--no-progress", ""), "empty argument ''")


# ---------------------------------------------------------------- a run whose checkpoint is damaged or replaced


def test_truncated_checkpoint_on_resume_names_it(run, tmp_path):
    damaged = copy_run(run, tmp_path / "damaged")
    last = damaged / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    before = {p.name: p.read_bytes() for p in damaged.iterdir() if p.is_file() and p.name != ".lock"}
    result = run_cli("train", "--resume", damaged, "--epochs", "2")  # was "error: Invalid argument"
    assert_one_line_error(result, str(last), "damaged checkpoint")
    assert {p.name: p.read_bytes() for p in damaged.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_checkpoint_that_is_not_a_checkpoint_names_it(run, tmp_path):
    import torch

    damaged = copy_run(run, tmp_path / "other")
    torch.save({"weights": 1}, damaged / "checkpoints" / "last.pt")
    assert_one_line_error(run_cli("train", "--resume", damaged, "--epochs", "2"), "last.pt", "not a bintally training checkpoint")


def test_config_of_another_model_beside_the_checkpoint(run, tmp_path):
    swapped = copy_run(run, tmp_path / "swapped")
    config = json.loads((swapped / "config.json").read_text())
    (swapped / "config.json").write_text(json.dumps(config | {"backbone": "resnet18"}))
    before = {p.name: p.read_bytes() for p in swapped.iterdir() if p.is_file() and p.name != ".lock"}
    result = run_cli("train", "--resume", swapped, "--epochs", "2")  # was a RuntimeError listing every key
    line = assert_one_line_error(result, "last.pt", "does not fit", "config.json")
    assert len(line) < 400
    assert {p.name: p.read_bytes() for p in swapped.iterdir() if p.is_file() and p.name != ".lock"} == before


# ---------------------------------------------------------------- messages name the data the user gave


def test_training_data_errors_name_the_manifest_given(tiny_manifest, tmp_path):
    df = pd.read_parquet(tiny_manifest)
    plain = tmp_path / "edited by hand.parquet"
    df[df["count"] != 0].to_parquet(plain)  # pandas, without bintally's metadata; and no photo of count 0
    result = run_cli(*TRAIN, "--data", plain, "--out", tmp_path / "run")
    assert_one_line_error(result, str(plain), "class(es) 0")  # was "<data>: ..."
    assert not (tmp_path / "run").exists()


def test_a_huge_label_space_gives_a_short_line(tiny_manifest):
    df = read_manifest(tiny_manifest)
    space = LabelSpace(0, 100_000, True)
    df["label"] = space.label_of(df["count"])
    with pytest.raises(ConfigError) as error:
        check_training_data(df, space)
    assert "in all)" in str(error.value) and len(str(error.value)) < 500
    assert str(tiny_manifest) in str(error.value)


def test_good_settings_still_train(tiny_manifest, tmp_path):
    config = tiny_config(tiny_manifest, tmp_path / "ok", max_steps=1, epochs=1, seed=2**32 - 1)
    assert train(config).run == str(tmp_path / "ok")
