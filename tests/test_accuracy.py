"""Issue 10: grouped K-fold cross-validation, stride-16 spatial heads, the whole count range and ensembles."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bintally.data.duplicates import duplicate_groups
from bintally.data.manifest import write_manifest
from bintally.data.sample import read_or_index
from bintally.data.split import SplitConfig, split_manifest
from bintally.evaluation.metrics import count_metrics
from bintally.inference import Counter
from bintally.labels import LabelSpace
from bintally.models.artifact import load_model, read_artifact, save_model
from bintally.models.config import ModelConfig
from bintally.models.model import CountingEnsemble, CountingModel, ProbabilityModel
from bintally.training import train
from bintally.training.crossval import assign_folds, fold_manifest
from bintally.training.data import labelled_manifest
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.training_helpers import tiny_config

MIRROR_IDS = 600  # consecutive mirror ids: many id blocks and near-duplicate pairs, every count 0-5 in every fold


@pytest.fixture(scope="module")
def mirror_manifest(mirror, tmp_path_factory):
    """600 real mirror photos (with their near-duplicates), split 0-5 + overflow like `data split`."""
    from tests.conftest import copy_bucket

    ids = sorted(p.stem for p in (mirror / "metadata").glob("*.json"))[:MIRROR_IDS]
    bucket = copy_bucket(mirror, tmp_path_factory.mktemp("mirror") / "bucket", ids)
    df = split_manifest(read_or_index(str(bucket)), SplitConfig())
    path = bucket.parent / "split.parquet"
    write_manifest(df, path, info=df.attrs["info"])
    return path


def test_folds_never_share_a_duplicate_group_and_leave_test_alone(mirror_manifest):
    df = labelled_manifest(str(mirror_manifest), None)
    folds = assign_folds(df, 5, seed=0)
    pool = df["split"].isin(["train", "val"])
    assert folds[pool].notna().all() and folds[~pool].isna().all()
    assert sorted(folds.dropna().unique()) == [0, 1, 2, 3, 4]
    photos = df[pool].reset_index(drop=True)
    groups = duplicate_groups(photos)
    per_group = pd.Series(folds[pool].to_numpy()).groupby(groups).nunique()
    assert (per_group == 1).all(), "a duplicate group straddles two folds"
    assert (per_group.index.size > 5) and photos.groupby(groups).size().max() > 1  # there were groups to keep together
    # fold k's manifest: that fold is val, the others train, the test split untouched
    for k in range(5):
        part = fold_manifest(df, folds, k)
        assert (part.loc[folds == k, "split"] == "val").all()
        assert (part.loc[pool & (folds != k), "split"] == "train").all()
        assert part.loc[~pool, "split"].equals(df.loc[~pool, "split"])


def test_a_wider_label_space_keeps_the_manifests_split(mirror_manifest):
    df = labelled_manifest(str(mirror_manifest), None)
    wide = labelled_manifest(str(mirror_manifest), LabelSpace(0, 12, True))
    only = labelled_manifest(str(mirror_manifest), LabelSpace(0, 5, False))
    assert wide["split"].equals(df["split"])
    assert wide["label"].max() == 13 and (wide.loc[df["count"] == 9, "label"] == 9).all()
    assert only.loc[df["count"] > 5, "label"].isna().all() and (only.loc[df["count"] > 5, "split"] == "excluded").all()
    assert only.loc[df["count"] <= 5, "split"].equals(df.loc[df["count"] <= 5, "split"])


def test_metrics_always_report_counts_0_5_and_1_5():
    true, pred = np.array([0, 3, 5, 7, 12]), np.array([0, 3, 4, 7, 13])
    m = count_metrics(true, pred, max_count=12)
    assert m["n_0_5"] == 3 and m["accuracy_0_5"] == pytest.approx(2 / 3) and m["n_1_5"] == 2
    assert m["n_0_12"] == 5 and m["accuracy_0_12"] == pytest.approx(3 / 5)


@pytest.mark.parametrize("features,max_count,overflow", [("stride16", 5, False), ("stride16", 7, True), ("pooled", 7, True)])
def test_fine_tuned_heads_and_label_spaces_reload_with_identical_outputs(tiny_manifest, tmp_path, features, max_count, overflow):
    run = tmp_path / "run"
    config = tiny_config(tiny_manifest, run, mode="partial", unfreeze=2, features=features, max_count=max_count,
                         overflow="class" if overflow else "exclude", epochs=1, max_steps=3)
    result = train(config)
    artifact = read_artifact(run)
    assert artifact.model.features == features and artifact.labels == LabelSpace(0, max_count, overflow)
    reloaded = load_model(artifact)
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = ProbabilityModel(result.model.eval())(images)
        got = ProbabilityModel(reloaded)(images)
    assert torch.equal(expected, got)
    assert got.shape == (4, LabelSpace(0, max_count, overflow).n_classes)
    names = Counter.load(run).prediction(got.numpy()).rows()[0]["probabilities"].keys()
    assert list(names)[-1] == ("8+" if overflow else "5")  # served results say "K+" for the overflow class


def test_spatial_head_reads_the_stride_16_map():
    model = CountingModel(ModelConfig(backbone="test_efficientnet_gn", pretrained=False, features="stride16")).eval()
    with torch.no_grad():
        maps = model.backbone(torch.randn(2, 3, 64, 64))
    assert maps.shape == (2, 48, 4, 4)
    assert not any("conv_head" in n or "blocks.4" in n for n, _ in model.named_parameters())


def ensemble_of(seeds, shared: bool):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(CountingModel(ModelConfig(backbone="test_efficientnet_gn", pretrained=False, head="ordinal",
                                                features="stride16")).eval())
    if shared:
        for m in models[1:]:
            m.backbone.load_state_dict(models[0].backbone.state_dict())
    return models, CountingEnsemble.of(models)


@pytest.mark.parametrize("shared", [True, False])
def test_an_ensemble_averages_its_members_and_round_trips_the_artifact(shared, tmp_path):
    from bintally.data.transforms import TransformConfig

    members, ensemble = ensemble_of([1, 2, 3], shared)
    assert ensemble.config.members == 3 and ensemble.config.shared_backbone == shared
    images = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        want = torch.stack([ProbabilityModel(m)(images) for m in members]).mean(0)
        got = ProbabilityModel(ensemble)(images)
        assert torch.allclose(got, want, atol=1e-6)
        transform = TransformConfig(64, ensemble.normalization.mean, ensemble.normalization.std)
        artifact = save_model(tmp_path / "model", ensemble, transform, tta=True)
        assert torch.equal(ProbabilityModel(load_model(read_artifact(artifact.path)))(images), got)


@pytest.mark.parametrize("shared", [True, False])
def test_ensemble_artifact_round_trips_through_onnx_with_agreeing_counts(tmp_path, mirror_manifest, shared):
    from bintally.data.transforms import TransformConfig

    _, ensemble = ensemble_of([4, 5], shared=shared)
    transform = TransformConfig(64, ensemble.normalization.mean, ensemble.normalization.std)
    save_model(tmp_path / "model", ensemble, transform, tta=True)
    out = tmp_path / "onnx"
    result = run_cli("export", "--model", tmp_path / "model", "--format", "onnx", "--out", out, "--data", mirror_manifest, "--no-progress")
    assert result.returncode == 0, result.stderr
    paths = [str(p) for p in sorted((mirror_manifest.parent / "bucket" / "bin-images").glob("*.jpg"))[:12]]
    torch_results, _ = Counter.load(tmp_path / "model").count_paths(paths, progress=False)
    onnx_results, _ = Counter.load(out, backend="onnx").count_paths(paths, progress=False)
    assert len(torch_results) == len(paths)
    assert [r["count"] for r in torch_results] == [r["count"] for r in onnx_results]
    assert np.allclose([r["expected_count"] for r in torch_results], [r["expected_count"] for r in onnx_results], atol=1e-4)
    assert json.loads((out / "model.json").read_text())["model_config"]["members"] == 2


def test_cross_validation_trains_every_fold_and_serves_their_ensemble(mirror_manifest, tmp_path):
    run = tmp_path / "cv"
    result = run_cli("train", "--data", str(mirror_manifest), "--out", str(run), "--folds", "3", "--mode", "frozen",
                     "--features", "stride16", "--backbone", "test_efficientnet_gn", "--random-init", "--image-size", "64",
                     "--epochs", "2", "--batch-size", "32", "--workers", "0", "--overflow", "exclude", "--no-progress")
    assert result.returncode == 0, result.stderr
    cv = json.loads((run / "cv.json").read_text())
    assert cv["k"] == 3 and [f["fold"] for f in cv["folds"]] == [1, 2, 3]
    accuracies = [f["val_accuracy_0_5"] for f in cv["folds"]]
    assert cv["summary"]["val_accuracy_0_5"]["mean"] == pytest.approx(np.mean(accuracies))
    assert cv["summary"]["val_accuracy_0_5"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    # each fold validated on its own photos, which together are the train+val part
    df = labelled_manifest(str(mirror_manifest), None)
    val_ids = [set(pd.read_parquet(run / "folds" / f"fold-{k}.parquet").query("split == 'val'")["id"]) for k in (1, 2, 3)]
    assert not (val_ids[0] & val_ids[1]) and not (val_ids[1] & val_ids[2])
    assert set().union(*val_ids) == set(df.loc[df["split"].isin(["train", "val"]) & (df["count"] <= 5), "id"])
    for k, f in enumerate(cv["folds"], 1):  # the recorded fold score is that fold model's own validation
        assert json.loads((run / f"fold-{k}" / "result.json").read_text())["final"]["val_accuracy_0_5"] == f["val_accuracy_0_5"]
    artifact = read_artifact(run)
    assert artifact.model.members == 3 and artifact.model.shared_backbone  # frozen folds share their backbone
    assert "fold" in result.stdout and "mean" in result.stdout and "std" in result.stdout
    # the ensemble equals the mean of its fold models
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        folds = torch.stack([ProbabilityModel(load_model(read_artifact(run / f"fold-{k}")))(images) for k in (1, 2, 3)]).mean(0)
        assert torch.allclose(ProbabilityModel(load_model(artifact))(images), folds, atol=1e-6)
    # a finished cross-validation resumed does nothing new and keeps its model
    version = artifact.version
    again = run_cli("train", "--resume", str(run), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert read_artifact(run).version == version
    # the ensemble trained on every train+val photo: it is calibrated on out-of-fold predictions, no --data needed
    calibrated = run_cli("calibrate", "--model", str(run), "--workers", "0", "--no-progress")
    assert calibrated.returncode == 0, calibrated.stderr
    calibration = read_artifact(run).calibration
    assert "out-of-fold" in calibration["data"] and calibration["photos"] == len(set().union(*val_ids))


def test_bad_fold_counts_are_one_line_exit_2(tiny_manifest, tmp_path):
    for folds in ("1", "21", "-2"):
        result = run_cli("train", "--data", str(tiny_manifest), "--folds", folds, "--out", str(tmp_path / f"r{folds}"))
        assert_one_line_error(result, "folds")
        assert not (tmp_path / f"r{folds}").exists()


def test_overwriting_a_cross_validation_trains_new_folds(mirror_manifest, tmp_path):
    run = tmp_path / "cv"
    args = ["train", "--data", str(mirror_manifest), "--out", str(run), "--folds", "2", "--mode", "frozen", "--features", "stride16",
            "--backbone", "test_efficientnet_gn", "--random-init", "--image-size", "64", "--batch-size", "32", "--workers", "0",
            "--no-progress"]
    assert run_cli(*args, "--epochs", "1").returncode == 0
    refused = run_cli(*args, "--epochs", "2")
    assert_one_line_error(refused, "already holds a run")
    assert run_cli(*args, "--epochs", "2", "--overwrite").returncode == 0
    for k in (1, 2):  # each fold was trained anew for 2 epochs, not resumed from the old 1-epoch fold
        rows = [json.loads(line) for line in (run / f"fold-{k}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2]
    assert json.loads((run / "cv.json").read_text())["k"] == 2


def test_a_signal_during_a_fold_stops_cleanly_and_resume_finishes_the_cross_validation(mirror_manifest, tmp_path):
    import os
    import signal
    import time

    from tests.helpers import process_group, wait_for
    from tests.test_reliability_train import train_process

    run = tmp_path / "cv"
    proc = train_process("--data", mirror_manifest, "--out", run, "--folds", "2", "--mode", "frozen", "--features", "stride16",
                         "--backbone", "test_efficientnet_gn", "--random-init", "--image-size", "64", "--epochs", "12",
                         "--batch-size", "32", "--workers", "0", "--no-progress")
    assert wait_for((run / "fold-1" / "metrics.jsonl").exists, 180), "the second fold never trained an epoch"
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"bintally train --resume {run}" in err and "Traceback" not in err
    assert list(process_group(proc.pid)) == [] and not (run / "cv.json").exists()
    resumed = run_cli("train", "--resume", run, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    cv = json.loads((run / "cv.json").read_text())
    assert [f["fold"] for f in cv["folds"]] == [1, 2]
    rows = [json.loads(line) for line in (run / "fold-1" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == 12 and read_artifact(run).model.members == 2


def test_more_folds_than_groups_is_one_line_and_leaves_no_run(small_bucket, tmp_path):
    run = tmp_path / "cv"
    result = run_cli("train", "--data", str(small_bucket), "--out", str(run), "--folds", "20", "--mode", "frozen",
                     "--backbone", "test_efficientnet_gn", "--random-init", "--image-size", "64", "--workers", "0", "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "5 groups of photos in train+val, fewer than the 20 folds" in errors[0]
    assert not run.exists()


def test_preset_best_is_a_cross_validated_spatial_ensemble(mirror_manifest, tmp_path):
    from bintally.training import resolve_config

    best = resolve_config("best")
    assert (best.folds, best.model.features, best.mode, best.select) == (5, "stride16", "frozen", "last")
    run = tmp_path / "best"
    result = run_cli("train", "--preset", "best", "--data", str(mirror_manifest), "--out", str(run), "--folds", "2",
                     "--backbone", "test_efficientnet_gn", "--random-init", "--image-size", "64", "--epochs", "1", "--workers", "0",
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    artifact = read_artifact(run)
    assert artifact.model.members == 2 and artifact.model.features == "stride16" and artifact.labels == LabelSpace(0, 5, False)
    assert json.loads((run / "config.json").read_text())["preset"] == "best"


def test_init_continues_each_fold_from_the_same_folds_model(mirror_manifest, tmp_path):
    common = ["--data", str(mirror_manifest), "--folds", "2", "--features", "stride16", "--backbone", "test_efficientnet_gn",
              "--random-init", "--image-size", "64", "--batch-size", "32", "--workers", "0", "--overflow", "exclude", "--no-progress"]
    frozen = tmp_path / "frozen"
    assert run_cli("train", "--out", frozen, "--mode", "frozen", "--epochs", "2", *common).returncode == 0
    tuned = tmp_path / "tuned"
    result = run_cli("train", "--out", tuned, "--mode", "partial", "--unfreeze", "1", "--epochs", "1", "--max-steps", "2",
                     "--init", frozen, *common)
    assert result.returncode == 0, result.stderr
    heads = {(name, k): load_model(read_artifact(run / f"fold-{k}")).state_dict()["head.body.0.weight"]
             for name, run in (("frozen", frozen), ("tuned", tuned)) for k in (1, 2)}
    for k, other_fold in ((1, 2), (2, 1)):  # each fold went on from its own fold's model (two small steps away from it)
        assert not torch.equal(heads["tuned", k], heads["frozen", k])
        assert (heads["tuned", k] - heads["frozen", k]).norm() < (heads["tuned", k] - heads["frozen", other_fold]).norm()
    other = run_cli("train", "--out", tmp_path / "other", "--mode", "partial", "--epochs", "1", "--init", frozen,
                    *[c if c != "2" else "3" for c in common])  # 3 folds: not the same folds as the init run
    assert_one_line_error(other, "--init", "folds")
    single = run_cli("train", "--out", tmp_path / "single", "--mode", "partial", "--epochs", "1", "--init", frozen,
                     *[c for c in common if c not in ("--folds", "2")])
    assert_one_line_error(single, "--init", "members")
