"""The training engine on real photos: smoke run, modes, resume (in-process and after SIGTERM), bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from bintally.data import read_manifest, write_manifest
from bintally.errors import ConfigError, DataError
from bintally.inference import Counter
from bintally.labels import LabelSpace
from bintally.models import CountingModel
from bintally.paths import SAMPLE_DIR, cache_dir
from bintally.training import TrainConfig, resolve_config, train
from bintally.training.health import HealthMonitor
from bintally.training.state import lr_factor
from tests.cli_helpers import run_cli
from tests.training_helpers import assert_same_weights, state_of, tiny_config


def test_one_step_smoke_run(tiny_manifest, tmp_path):
    result = train(tiny_config(tiny_manifest, tmp_path / "run", max_steps=1, epochs=1))
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "model/model.json", "model_card.md", "health.json", "checkpoints/last.pt"):
        assert (run / name).exists(), name
    assert not (run / "best.pt").exists()
    assert len(list((run / "model").glob("weights-*.safetensors"))) == 1
    assert result.final["val_n"] == 56
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "epoch", "step", "rng", "config"} <= set(ckpt)
    assert (ckpt["epoch"], ckpt["step"], ckpt["global_step"]) == (0, 1, 1)
    photos = sorted((SAMPLE_DIR / "bin-images").glob("*.jpg"))[:3]
    counter = Counter.load(run)
    assert counter.artifact.decoding == "median" and counter.artifact.metrics == result.final
    val = read_manifest(tiny_manifest).query("split == 'val'")
    val_counts = [r["count"] for r in counter.count_paths(val["path"].tolist(), progress=False)[0]]
    assert result.final["val_accuracy"] == pytest.approx(float(np.mean(np.array(val_counts) == val["label"].to_numpy())))
    preds, failures = counter.count_paths(photos)
    assert len(preds) == 3 and failures == []
    for p in preds:
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-3
        probs = list(p["probabilities"].values())
        index = counter.labels.names.index(p["label"])
        assert p["count"] == index and p["confidence"] == p["probabilities"][p["label"]]
        assert sum(probs[:index]) < 0.5 <= sum(probs[: index + 1]) + 1e-3  # ordinal head: the median
    cli = run_cli("predict", "--model", run, "--json", photos[0])
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)[0] == preds[0]
    lines = run_cli("predict", "--model", run / "model", "--no-progress", *photos)
    assert lines.returncode == 0, lines.stderr
    for line, p in zip(lines.stdout.splitlines(), preds, strict=True):
        assert line == f"{p['image']}\t{p['label']}\t(p={p['confidence']:.2f}, expected {p['expected_count']:.2f})"


def test_resume_mid_epoch_gives_identical_weights(tiny_manifest, tmp_path, two_epoch_run):
    train(tiny_config(tiny_manifest, tmp_path / "split", epochs=2, max_steps=5))
    assert torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=False)["step"] == 5
    train(tiny_config(tiny_manifest, tmp_path / "split", epochs=2), resume=str(tmp_path / "split"))
    assert_same_weights(state_of(two_epoch_run), state_of(tmp_path / "split"))
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 1, 2]


def test_sigterm_checkpoints_and_resume_matches(tiny_manifest, tmp_path):
    args = ["--data", tiny_manifest, "--backbone", "test_efficientnet_gn", "--random-init", "--image-size", "64",
            "--batch-size", "16", "--workers", "0", "--lr", "3e-3", "--warmup-epochs", "0.2", "--epochs", "2", "--no-progress"]
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "bintally", "train", "--out", run, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped by signal" in err and f"--resume {run}" in err
    assert (run / "checkpoints" / "last.pt").exists()
    resumed = run_cli("train", "--resume", run, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    train(tiny_config(tiny_manifest, tmp_path / "whole", epochs=2, channels_last=True))
    assert_same_weights(state_of(tmp_path / "whole"), state_of(run))


def test_resume_with_a_different_config_is_refused(tiny_manifest, tmp_path):
    train(tiny_config(tiny_manifest, tmp_path / "run", max_steps=1))
    with pytest.raises(ConfigError, match=r"lr: run has 0.003, you asked for 0.1"):
        train(tiny_config(tiny_manifest, tmp_path / "run"), resume=str(tmp_path / "run"), explicit={"lr": 0.1})
    with pytest.raises(DataError, match="no such run directory to resume"):
        train(tiny_config(tiny_manifest, tmp_path / "new"), resume=str(tmp_path / "new"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="nothing to resume"):
        train(tiny_config(tiny_manifest, tmp_path / "empty"), resume=str(tmp_path / "empty"))


def test_frozen_mode_trains_head_on_cached_features(tiny_manifest, tmp_path):
    config = tiny_config(tiny_manifest, tmp_path / "frozen", mode="frozen", head="mlp", epochs=3)
    result = train(config)
    features = list(cache_dir().glob("features/*.pt"))
    assert features, "no feature cache written"
    stamps = {f: f.stat().st_mtime for f in features}
    fresh = train(tiny_config(tiny_manifest, tmp_path / "frozen2", mode="frozen", head="mlp", epochs=3))
    assert {f: f.stat().st_mtime for f in features} == stamps  # reused, not recomputed
    torch.manual_seed(config.seed)
    reference = CountingModel(config.model)
    trained = result.model.state_dict()
    for k, v in reference.backbone.state_dict().items():
        assert torch.equal(trained[f"backbone.{k}"], v), k  # backbone untouched (same seed init)
    assert not torch.equal(trained["head.net.1.weight"], reference.state_dict()["head.net.1.weight"])
    assert fresh.final == result.final  # deterministic


def test_partial_mode_trains_only_the_top_stages(tiny_manifest, tmp_path):
    config = tiny_config(tiny_manifest, tmp_path / "partial", mode="partial", unfreeze=1, max_steps=3)
    torch.manual_seed(config.seed)
    before = {k: v.clone() for k, v in CountingModel(config.model).state_dict().items()}
    after = train(config).model.state_dict()
    changed = {k.split(".")[1] for k in after if k.startswith("backbone.") and not torch.equal(after[k], before[k])}
    assert changed == {"conv_head", "bn2"}


def test_bad_training_data_is_refused(tiny_manifest, tmp_path):
    df = pd.read_parquet(tiny_manifest)
    no_zero = df[df["label"] != 0]
    write_manifest(no_zero, tmp_path / "no_zero.parquet", info={"split": {"max_count": 5}})
    with pytest.raises(ConfigError, match="class\\(es\\) 0 have no training examples"):
        train(tiny_config(tmp_path / "no_zero.parquet", tmp_path / "r1"))
    only_val = df.assign(split="val")
    write_manifest(only_val, tmp_path / "only_val.parquet", info={"split": {"max_count": 5}})
    with pytest.raises(DataError, match="the train split has no usable photos"):
        train(tiny_config(tmp_path / "only_val.parquet", tmp_path / "r2"))
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("turbo")
    with pytest.raises(ConfigError, match="unknown optimizer"):
        TrainConfig(optimizer="lion")


def test_the_flat_settings_map_to_the_nested_model_config_and_back():
    spatial = resolve_config("spatial", max_count=3)
    assert (spatial.model.features, spatial.model.max_count, spatial.model.overflow) == ("stride16", 3, False)
    assert spatial.labels_from_manifest == ("min_count",)
    flat = spatial.to_dict()
    assert (flat["features"], flat["min_count"], flat["max_count"], flat["overflow"]) == ("stride16", None, 3, "exclude")
    assert TrainConfig.from_dict(flat) == spatial
    resolved = spatial.with_labels(LabelSpace(1, 5, True))
    assert resolved.model.labels == LabelSpace(1, 3, False) and resolved.labels_from_manifest == ()
    assert resolved.to_dict() == flat | {"min_count": 1}
    with pytest.raises(ConfigError, match="unknown overflow 'drop': use one of class, exclude"):
        TrainConfig.from_dict({"overflow": "drop"})
    with pytest.raises(ConfigError, match=r"unknown settings: \['members'\]"):  # an ensemble's size is not a training setting
        TrainConfig.from_dict({"members": 2})
    with pytest.raises(ConfigError, match=r"min_count \(4\) is above max_count \(3\)"):
        TrainConfig.from_dict({"min_count": 4, "max_count": 3})


def test_schedules_warm_up_then_decay():
    config = TrainConfig(epochs=4, warmup_epochs=1)
    lrs = [lr_factor(s, 10, config) for s in range(40)]
    assert lrs[0] == pytest.approx(0.01) and max(lrs) == pytest.approx(1.0, abs=0.01)
    assert lrs[9] < lrs[10] and lrs[39] < 0.05
    sgdr = [lr_factor(s, 10, TrainConfig(epochs=7, warmup_epochs=0, schedule="sgdr", restart_epochs=1)) for s in range(70)]
    assert sgdr[10] == pytest.approx(1.0) and sgdr[9] < 0.1  # restart after the first 1-epoch cycle
    step = [lr_factor(s, 10, TrainConfig(epochs=6, warmup_epochs=0, schedule="step", step_epochs=2, step_gamma=0.5)) for s in range(60)]
    assert step[19] == 1.0 and step[20] == 0.5 and step[40] == 0.25


def test_health_checks_flag_problems():
    m = HealthMonitor(n_classes=7)
    m.on_step(loss=50.0, grad_norm=float("nan"), wait=0.5, step_time=0.1)
    for _ in range(100):
        m.on_step(loss=50.0, grad_norm=1e-9, wait=0.5, step_time=0.1)
    m.on_step(loss=50.0, grad_norm=1.0, wait=0.0, step_time=5.0)
    for train_acc, val_acc in [(0.5, 0.4), (0.7, 0.4), (0.9, 0.4)]:
        m.on_epoch(train_acc, val_acc)
    summary = m.summary("cuda")
    assert set(summary["findings"]) == {"poor weight initialisation", "exploding gradients", "vanishing gradients",
                                        "overfitting", "loss not decreasing", "data-loader bottleneck",
                                        "low accelerator utilisation", "step-time outliers"}
    healthy = HealthMonitor(n_classes=7)
    for i in range(120):
        healthy.on_step(loss=2.0 / (1 + i / 20), grad_norm=1.0, wait=0.001, step_time=0.1)
    healthy.on_epoch(0.6, 0.55)
    assert healthy.summary("cpu")["findings"] == {}


def test_profile_writes_a_trace(tiny_manifest, tmp_path):
    train(tiny_config(tiny_manifest, tmp_path / "prof", max_steps=6, profile=True))
    traces = list((tmp_path / "prof" / "profile").glob("*.json*"))
    assert traces and traces[0].stat().st_size > 10_000


def test_every_setting_is_a_cli_option():
    import inspect

    from bintally.cli.train import train_cmd
    from bintally.training.config import SETTING_NAMES

    assert set(SETTING_NAMES) <= set(inspect.signature(train_cmd).parameters)  # the model's settings included
