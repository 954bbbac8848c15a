"""The model artifact (model.json + safetensors): round trip, kill-safe saving, torch-free reading, and the Counter on top."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bintally.data.transforms import TransformConfig
from bintally.errors import DataError
from bintally.inference import Counter, Prediction
from bintally.models.artifact import META_FILE, ModelArtifact, load_model, read_artifact, save_model
from bintally.models.config import ModelConfig
from bintally.models.model import CountingModel, ProbabilityModel
from bintally.paths import SAMPLE_DIR
from bintally.training import train
from tests.cli_helpers import run_cli
from tests.training_helpers import TINY, tiny_config

PHOTOS = sorted((SAMPLE_DIR / "bin-images").glob("*.jpg"))[:6]
TINY_FLAGS = ["--backbone", TINY["backbone"], "--random-init", "--image-size", "64", "--batch-size", "16", "--workers", "0",
              "--lr", "3e-3", "--warmup-epochs", "0.2", "--no-channels-last", "--no-progress"]


def tiny_model(seed: int, head: str = "linear", **config) -> tuple[CountingModel, TransformConfig]:
    torch.manual_seed(seed)
    model = CountingModel(ModelConfig(backbone="test_efficientnet_gn", head=head, pretrained=False, **config)).eval()
    return model, TransformConfig(64, model.normalization.mean, model.normalization.std)


def weights_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("weights-*.safetensors"))


def photo_batch(transform: TransformConfig) -> np.ndarray:
    from bintally.data.images import decode_image
    from bintally.data.transforms import preprocess_batch

    return preprocess_batch([decode_image(p) for p in PHOTOS], transform)


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("head, tta", [("linear", True), ("ordinal", False)])
def test_save_and_read_round_trip_gives_identical_probabilities(tmp_path, head, tta):
    model, transform = tiny_model(3, head, max_count=4)
    metrics = {"val_accuracy": 0.25, "val_rmse": 1.5, "val_n": 56}
    saved = save_model(tmp_path / "m", model, transform, tta=tta, train_config={"seed": 3, "tta": tta}, metrics=metrics)
    read = read_artifact(tmp_path / "m")
    assert read.to_json() == saved.to_json()
    assert (read.model, read.transform, read.tta, read.metrics, read.train_config) == (model.config, transform, tta, metrics, {"seed": 3, "tta": tta})
    assert read.labels.names == ["0", "1", "2", "3", "4", "5+"] and read.decoding == ("median" if head == "ordinal" else "argmax")
    assert read.weights == f"weights-{read.version}.safetensors" and len(read.version) == 12

    reloaded = load_model(read)
    assert not reloaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name

    x = photo_batch(transform)
    with torch.no_grad():
        expected = ProbabilityModel(model, tta).eval()(torch.from_numpy(x)).numpy()
    counter = Counter.load(tmp_path / "m")
    assert counter.backend_name == "torch"
    assert np.array_equal(counter.probabilities(x), expected)
    results, failures = counter.count_paths(PHOTOS, batch_size=4, progress=False)
    assert failures == [] and [r["image"] for r in results] == [str(p) for p in PHOTOS]
    described = Prediction.of(read.labels, expected, read.decoding).rows()
    assert [{k: v for k, v in r.items() if k != "image"} for r in results] == described
    assert counter.count_images([Image.open(p) for p in PHOTOS]) == described == counter.predict(x).rows()


def test_model_json_says_what_a_client_needs(tiny_artifact):
    meta = json.loads((tiny_artifact.path / META_FILE).read_text())
    assert meta["format"] == "bintally-model" and meta["format_version"] == 1 and meta["runtime"] == "torch"
    assert meta["input"] == {"name": "images", "datatype": "FP32", "shape": [-1, 3, 64, 64]}
    assert meta["output"] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 7]}
    assert meta["labels"]["names"] == ["0", "1", "2", "3", "4", "5", "6+"] and meta["decoding"] == "argmax"
    assert meta["model_config"]["pretrained"] is False and meta["model_config"]["weights"] is None
    info = Counter.load(tiny_artifact.path).info()
    assert info | {"metrics": None} == {"name": "bin-counter", "version": tiny_artifact.version, "backend": "torch", "runtime": "torch",
                                        "backbone": "test_efficientnet_gn", "head": "linear", "features": "pooled", "members": 1,
                                        "classes": meta["labels"]["names"],
                                        "decoding": "argmax", "temperature": 1.0, "tta": True, "image_size": 64, "metrics": None}
    assert info["metrics"] == {"val_accuracy": 0.0}


def test_model_json_is_strict_json_whatever_the_metrics(tmp_path):
    model, transform = tiny_model(0)
    metrics = {"val_accuracy": np.float32(0.5), "val_n": np.int64(56), "val_accuracy_1_5": float("nan"), "val_rmse_1_5": np.float64("inf")}
    save_model(tmp_path / "m", model, transform, tta=True, metrics=metrics)
    meta = json.loads((tmp_path / "m" / META_FILE).read_text(), parse_constant=lambda c: pytest.fail(f"{c} in model.json"))
    assert meta["metrics"] == {"val_accuracy": 0.5, "val_n": 56, "val_accuracy_1_5": None, "val_rmse_1_5": None}
    assert read_artifact(tmp_path / "m").metrics == meta["metrics"]


def test_a_pretrained_model_is_saved_with_every_weight(tmp_path):
    """model.json says pretrained=false: loading must not need (or fetch) the ImageNet weights, the artifact holds them all."""
    model, transform = tiny_model(0)
    model.config.pretrained = True
    artifact = save_model(tmp_path / "m", model, transform, tta=True)
    assert artifact.model.pretrained is True  # what was trained ...
    read = read_artifact(tmp_path / "m")
    assert read.model.pretrained is False and read.model.weights is None  # ... and what loading builds before the weights


def test_photos_of_the_wrong_shape_are_refused(tiny_artifact):
    counter = Counter.load(tiny_artifact.path)
    assert counter.probabilities(np.zeros((0, 3, 64, 64), np.float32)).shape == (0, 7)
    with pytest.raises(ValueError, match=r"expected pre-processed photos of shape \[N, 3, 64, 64\], got \[2, 3, 32, 32\]"):
        counter.probabilities(np.zeros((2, 3, 32, 32), np.float32))


# ---------------------------------------------------------------- saving is kill-safe


def test_a_second_save_leaves_one_weights_file_and_model_json_pointing_at_it(tmp_path):
    first_model, transform = tiny_model(1)
    first = save_model(tmp_path / "m", first_model, transform, tta=True, metrics={"val_accuracy": 0.1})
    second_model, _ = tiny_model(2)
    second = save_model(tmp_path / "m", second_model, transform, tta=True, metrics={"val_accuracy": 0.2})
    assert first.version != second.version
    assert weights_files(tmp_path / "m") == [second.weights]
    assert json.loads((tmp_path / "m" / META_FILE).read_text())["weights"] == second.weights
    read = read_artifact(tmp_path / "m")
    assert read.version == second.version and read.metrics == {"val_accuracy": 0.2}
    assert torch.equal(load_model(read).state_dict()["head.net.1.weight"], second_model.state_dict()["head.net.1.weight"])
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted([META_FILE, second.weights])  # no temporary files left


def test_a_save_interrupted_before_model_json_leaves_the_previous_model_whole(tmp_path, monkeypatch):
    first_model, transform = tiny_model(1)
    first = save_model(tmp_path / "m", first_model, transform, tta=True)
    before = Counter.load(tmp_path / "m").probabilities(photo_batch(transform))

    def killed(self):
        raise KeyboardInterrupt  # the process dies after the new weights file, before model.json points at it

    monkeypatch.setattr(ModelArtifact, "write_metadata", killed)
    with pytest.raises(KeyboardInterrupt):
        save_model(tmp_path / "m", tiny_model(2)[0], transform, tta=True)
    monkeypatch.undo()
    assert len(weights_files(tmp_path / "m")) == 2  # a leftover weights file of the interrupted save ...
    read = read_artifact(tmp_path / "m")
    assert read.version == first.version  # ... does not confuse reading: model.json names the model
    assert np.array_equal(Counter.load(tmp_path / "m").probabilities(photo_batch(transform)), before)
    third = save_model(tmp_path / "m", tiny_model(3)[0], transform, tta=True)
    assert weights_files(tmp_path / "m") == [third.weights]  # the next save clears the leftover


@pytest.mark.slow
def test_a_process_killed_while_saving_again_and_again_always_leaves_a_loadable_model(tmp_path):
    folder = tmp_path / "m"
    script = textwrap.dedent(f"""
        import torch
        from bintally.data.transforms import TransformConfig
        from bintally.models.artifact import save_model
        from bintally.models.config import ModelConfig
        from bintally.models.model import CountingModel
        model = CountingModel(ModelConfig(backbone="test_efficientnet_gn", head="linear", pretrained=False))
        transform = TransformConfig(64, model.normalization.mean, model.normalization.std)
        for i in range(100000):
            with torch.no_grad():
                model.head.net[1].bias.fill_(i)
            save_model({str(folder)!r}, model, transform, tta=True, metrics={{"i": i}})
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(20):  # let it save a few times, then kill it mid-way through some save
            assert proc.stdout.readline(), "the saving process ended early"
        time.sleep(0.013)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    read = read_artifact(folder)
    bias = load_model(read).state_dict()["head.net.1.bias"]
    assert torch.equal(bias, torch.full_like(bias, read.metrics["i"]))  # model.json and its weights belong together
    assert read.metrics["i"] >= 19
    assert 1 <= len(weights_files(folder)) <= 2  # at most the one weights file the killed save had written


# ---------------------------------------------------------------- reading needs no torch


def test_read_artifact_never_imports_torch(tiny_artifact):
    code = ("import sys\nfrom bintally.models.artifact import read_artifact\n"
            "for path in sys.argv[1:]:\n    a = read_artifact(path)\n    print(a.version, a.labels.n_classes, a.transform.image_size)\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    paths = (tiny_artifact.path, tiny_artifact.path / META_FILE, tiny_artifact.weights_file)
    result = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{tiny_artifact.version} 7 64"] * 3


def test_a_bad_model_json_is_reported_without_torch_too(tmp_path):
    (tmp_path / META_FILE).write_text("{}")
    code = ("import sys\nfrom bintally.errors import DataError\nfrom bintally.models.artifact import read_artifact\n"
            "try:\n    read_artifact(sys.argv[1])\nexcept DataError as e:\n    print(e)\n"
            "assert 'torch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{tmp_path / META_FILE}: not a bintally model description (format is None, expected 'bintally-model')"
    with pytest.raises(DataError, match="not a bintally model description"):
        read_artifact(tmp_path)


# ---------------------------------------------------------------- a training run's model


def test_overwriting_a_run_deletes_its_model_folder(tiny_manifest, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_manifest, out, max_steps=1, epochs=1))
    first = read_artifact(out)
    assert first.path == out / "model" and weights_files(out / "model") == [first.weights]
    stray = out / "model" / "weights-000000000000.safetensors"  # e.g. left by a save that was killed
    stray.write_bytes(b"old")
    (out / "model" / "notes.txt").write_text("inside the model folder: part of the run")
    result = run_cli("train", "--data", tiny_manifest, "--out", out, "--max-steps", 2, "--epochs", 1, "--overwrite", *TINY_FLAGS)
    assert result.returncode == 0, result.stderr
    second = read_artifact(out)
    assert second.version != first.version and second.train_config["max_steps"] == 2
    assert sorted(p.name for p in (out / "model").iterdir()) == sorted([META_FILE, second.weights])


def test_a_torch_backend_with_its_own_thread_count_leaves_the_process_setting_alone(tiny_artifact):
    import numpy as np
    import torch

    from bintally.inference.backends import TorchBackend

    before = torch.get_num_threads()
    backend = TorchBackend(tiny_artifact, threads=1 if before > 1 else 2)
    probs = backend.probabilities(np.zeros((2, 3, 64, 64), np.float32))
    assert probs.shape == (2, tiny_artifact.labels.n_classes)
    assert torch.get_num_threads() == before  # training later in the same process keeps its own arithmetic
