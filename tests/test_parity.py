"""Parity: the validation metrics a training run records for its saved model are what `evaluate` computes for that model,
and `predict` (the Counter) counts each photo as evaluation does, in every training mode.

Also the regression test of the frozen-mode feature cache: it was keyed by the backbone's name and settings, so a second
run with a randomly initialised backbone (another seed, the seed-baseline situation) trained its head on the first run's
features and saved a model whose recorded metrics evaluate could not reproduce.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bintally.data import read_manifest
from bintally.data.transforms import TransformConfig
from bintally.evaluation import evaluate, evaluate_predictions, load_predictions
from bintally.inference import Counter
from bintally.models.artifact import load_model, read_artifact
from bintally.paths import cache_dir
from bintally.training import train
from bintally.training.data import check_training_data
from bintally.training.features import cache_key, cache_photos, extract_features
from tests.training_helpers import tiny_config

pytestmark = pytest.mark.slow

PROBE = 5  # val photos counted one by one with the Counter


def best_row(run) -> dict:
    """The metrics.jsonl row of the epoch whose model was saved: the first with the best (accuracy 0-5, -rmse 0-5)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return max(rows, key=lambda r: (r["val_accuracy_0_5"], -r["val_rmse_0_5"]))  # max keeps the first of equals


def assert_recorded_equals_evaluated(run, manifest, tmp_path) -> dict:
    recorded = read_artifact(run).metrics
    row = best_row(run)
    assert recorded == {k: v for k, v in row.items() if k.startswith("val_")}  # model.json holds the saved epoch's metrics
    result = evaluate(model=run, data=manifest, split="val", save_to=tmp_path / "predictions.csv", workers=0, progress=False,
                      resamples=20)
    # training scores in its label space (a bin of 9 is "6+", 6 items), evaluate against each photo's real count:
    # the same on 0-5 and 1-5, and on all photos once evaluate is given only the classes
    in_classes = evaluate_predictions(load_predictions(tmp_path / "predictions.csv").drop(columns="true_count"), resamples=20)
    for m, keys in ((result.metrics, ("_0_5", "_1_5")), (in_classes.metrics, ("", "_0_5"))):
        assert m["n"] == recorded["val_n"] == 56
        for suffix in keys:
            for name in ("accuracy", "within1"):
                assert m[name + suffix] == pytest.approx(recorded[f"val_{name}{suffix}"], abs=1e-9), name + suffix
            for name in ("rmse", "mae", "rel_error"):
                assert m[name + suffix] == pytest.approx(recorded[f"val_{name}{suffix}"], rel=1e-6), name + suffix
    return recorded


def assert_counter_matches_saved_predictions(run, tmp_path) -> None:
    saved = load_predictions(tmp_path / "predictions.csv")
    probe = saved.iloc[np.linspace(0, len(saved) - 1, PROBE).round().astype(int)]
    results, failures = Counter.load(run).count_paths(probe["path"].tolist(), batch_size=2, progress=False)
    assert failures == [] and [r["image"] for r in results] == probe["path"].tolist()
    assert [r["count"] for r in results] == probe["predicted_count"].tolist()
    for r, (_, row) in zip(results, probe.iterrows()):
        assert r["confidence"] == pytest.approx(row["confidence"], abs=2e-4)
        assert r["expected_count"] == pytest.approx(row["expected_count"], abs=2e-3)
        for name, p in r["probabilities"].items():
            assert p == pytest.approx(row[f"prob_{name}"], abs=2e-4), name


@pytest.mark.parametrize("mode, settings", [
    ("frozen", dict(head="mlp", epochs=3)),
    ("partial", dict(head="ordinal", unfreeze=1, epochs=1, max_steps=4)),
    ("full", dict(head="linear", epochs=2, max_steps=11)),  # 10 steps an epoch: a second, short epoch
])
def test_recorded_validation_metrics_equal_evaluate_and_predict_counts_as_evaluate(mode, settings, tiny_manifest, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_manifest, run, mode=mode, **settings))
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == settings["epochs"]  # with more than one validation, the saved model is the best epoch's
    if mode == "frozen":  # validated on cached features, evaluated on photos
        artifact = read_artifact(run)
        photos = cache_photos(check_training_data(read_manifest(tiny_manifest), artifact.labels).values())
        assert (cache_dir() / "features" / f"{cache_key(load_model(artifact), artifact.transform, photos)}.pt").is_file()
    assert_recorded_equals_evaluated(run, tiny_manifest, tmp_path)
    assert_counter_matches_saved_predictions(run, tmp_path)


def cached_files(cache) -> set:
    return {p.name for p in (cache / "features").glob("*.pt")} if (cache / "features").is_dir() else set()


def test_frozen_random_init_runs_with_other_seeds_do_not_share_cached_features(tiny_manifest, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BINTALLY_CACHE", str(cache))  # a cache of this test's own
    df = read_manifest(tiny_manifest)
    val = df[df["split"] == "val"].reset_index(drop=True)
    seen: dict[int, set] = {}
    for seed in (1, 2):
        before = cached_files(cache)
        run = tmp_path / f"seed{seed}"
        train(tiny_config(tiny_manifest, run, mode="frozen", head="mlp", epochs=2, seed=seed))
        seen[seed] = cached_files(cache) - before
        assert len(seen[seed]) == 1, (seed, seen)  # one file, of this run's own backbone's features: nothing reused
        assert_recorded_equals_evaluated(run, tiny_manifest, tmp_path / f"eval{seed}")

        # the features cached under this run's key are its saved backbone's features of its photos
        artifact = read_artifact(run)
        model = load_model(artifact)
        photos = cache_photos(check_training_data(df, artifact.labels).values())
        key = cache_key(model, artifact.transform, photos)
        assert f"{key}.pt" in seen[seed]
        cached = torch.load(cache / "features" / f"{key}.pt", weights_only=True)
        rows = [photos.index[photos["sha256"] == sha][0] for sha in val["sha256"]]
        fresh = extract_features(model.backbone, val, artifact.transform, "cpu", workers=0, progress=False)
        assert torch.allclose(cached[rows], fresh, atol=1e-5)

    # the same seed again: the same backbone, so its features are reused and nothing is recomputed
    stamps = {name: (cache / "features" / name).stat().st_mtime_ns for name in seen[1]}
    train(tiny_config(tiny_manifest, tmp_path / "seed1-again", mode="frozen", head="mlp", epochs=2, seed=1))
    assert cached_files(cache) == seen[1] | seen[2]
    assert {name: (cache / "features" / name).stat().st_mtime_ns for name in seen[1]} == stamps
    assert read_artifact(tmp_path / "seed1-again").version == read_artifact(tmp_path / "seed1").version  # deterministic


def test_the_feature_cache_key_follows_the_backbones_weights_and_preprocessing(tiny_manifest):
    from bintally.models.config import ModelConfig
    from bintally.models.model import CountingModel

    photos = read_manifest(tiny_manifest).head(4)
    models = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        models.append(CountingModel(ModelConfig(backbone="test_efficientnet_gn", pretrained=False)))
    transform = TransformConfig(64, models[0].normalization.mean, models[0].normalization.std)
    keys = [cache_key(m, transform, photos) for m in models]
    assert keys[0] == keys[1] != keys[2]
    assert cache_key(models[0], TransformConfig(96, transform.mean, transform.std), photos) != keys[0]
    assert cache_key(models[0], transform, photos.head(3)) != keys[0]
