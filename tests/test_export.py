"""`bintally export`: ONNX (fp32 and int8) and safetensors exports of real models, checked on real photos."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bintally.data import build_manifest, read_manifest, split_manifest, write_manifest
from bintally.data.split import SplitConfig
from bintally.errors import DataError
from bintally.paths import SAMPLE_DIR
from bintally.training import PRESETS
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.conftest import copy_bucket, make_artifact

SAMPLE_PHOTOS = sorted((SAMPLE_DIR / "bin-images").glob("*.jpg"))


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """A split manifest of 120 real sample photos (about half train, half val): quick to index."""
    ids = [p.stem for p in SAMPLE_PHOTOS[:120]]
    bucket = copy_bucket(SAMPLE_DIR, tmp_path_factory.mktemp("photos") / "bucket", ids)
    df = split_manifest(build_manifest(bucket, progress=False), SplitConfig(fractions=(0.5, 0.5, 0.0)))
    path = bucket.parent / "manifest.parquet"
    write_manifest(df, path, info=df.attrs["info"])
    return path


@pytest.fixture(scope="module")
def onnx_export(tiny_artifact, small_data, tmp_path_factory):
    """The CLI's fp32 ONNX export of the tiny model: (result of the command, export folder)."""
    out = tmp_path_factory.mktemp("exports") / "tiny-onnx"
    result = run_cli("export", "--model", tiny_artifact.path, "--format", "onnx", "--out", out, "--data", small_data, "--no-progress")
    assert result.returncode == 0, result.stderr
    return result, out


def photos(n: int, start: int = 0) -> list[Path]:
    return SAMPLE_PHOTOS[start:start + n]


def photo_counts(counter, paths) -> np.ndarray:
    """The counts a model gives the photos, in their order."""
    results, failures = counter.count_paths(list(paths), progress=False)
    assert not failures
    return np.array([r["count"] for r in results])


# ---------------------------------------------------------------- fp32 ONNX


@pytest.mark.slow
def test_onnx_export_matches_pytorch_on_real_photos(onnx_export, tiny_artifact):
    from bintally.models.artifact import read_artifact

    result, out = onnx_export
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    assert result.stdout.splitlines()[-1] == f"wrote {out}"
    assert "parity fp32: " in result.stdout and "same count on 100.0%" in result.stdout
    assert not re.search(r"\d+%\|", result.stderr), result.stderr  # --no-progress: no bar
    exported = read_artifact(out)
    assert exported.runtime == "onnx" and exported.weights == "model.onnx"
    assert exported.labels.names == tiny_artifact.labels.names and exported.transform == tiny_artifact.transform
    assert exported.tta == tiny_artifact.tta and exported.version != tiny_artifact.version
    info = exported.export
    assert info["source"]["version"] == tiny_artifact.version and info["opset"] >= 17 and info["quantization"] is None
    parity = info["parity"]["fp32"]
    assert parity["photos"] >= 30 and parity["count_agreement"] == 1.0 and parity["max_abs_diff"] < 1e-4
    meta = json.loads((out / "model.json").read_text())
    assert meta["input"]["shape"] == [-1, 3, 64, 64] and meta["output"]["name"] == "probabilities"


@pytest.mark.slow
def test_parity_function_and_dynamic_batch(onnx_export, tiny_artifact):
    import onnxruntime as ort

    from bintally.data.images import decode_image
    from bintally.data.transforms import preprocess
    from bintally.export.onnx import parity

    _, out = onnx_export
    check = parity(tiny_artifact, out / "model.onnx", photos(12, 300), batch_size=5)
    assert check["photos"] == 12 and check["count_agreement"] == 1.0 and check["max_abs_diff"] < 1e-4
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape[1:], outp.name) == ("images", [3, 64, 64], "probabilities")
    images = np.stack([preprocess(decode_image(p), tiny_artifact.transform) for p in photos(5, 400)])
    five = session.run(None, {"images": images})[0]
    one = session.run(None, {"images": images[:1]})[0]
    assert five.shape == (5, 7) and one.shape == (1, 7)
    np.testing.assert_allclose(one[0], five[0], atol=1e-5)
    np.testing.assert_allclose(five.sum(1), 1, atol=1e-5)


@pytest.mark.slow
def test_counter_on_onnx_export_and_cache_count_as_pytorch(onnx_export, tiny_artifact):
    from bintally.inference import Counter
    from bintally.inference.onnx import cached_onnx

    _, out = onnx_export
    paths = photos(16, 600)
    torch_results, _ = Counter.load(tiny_artifact.path, backend="torch").count_paths(paths, batch_size=5, progress=False)
    export_counter = Counter.load(out, backend="onnx")
    onnx_results, _ = export_counter.count_paths(paths, batch_size=5, progress=False)
    assert export_counter.info()["runtime"] == "onnx" and export_counter.backend_name == "onnx"
    assert [r["count"] for r in onnx_results] == [r["count"] for r in torch_results]
    for a, b in zip(onnx_results, torch_results):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)
    # a PyTorch model on the onnx backend: exported once into the cache, then reused
    cached = cached_onnx(tiny_artifact)
    assert cached.name == f"{tiny_artifact.version}-tta1-s64.onnx" and cached.parent.name == "onnx"
    mtime = cached.stat().st_mtime_ns
    cached_results, _ = Counter.load(tiny_artifact.path, backend="onnx").count_paths(paths, batch_size=16, progress=False)
    assert [r["count"] for r in cached_results] == [r["count"] for r in torch_results]
    assert cached_onnx(tiny_artifact) == cached and cached.stat().st_mtime_ns == mtime
    assert not [p for p in cached.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_export_serves_without_torch(onnx_export):
    _, out = onnx_export
    code = f"""
import sys
from bintally.inference import Counter
counter = Counter.load({str(out)!r}, backend="onnx")
results, failures = counter.count_paths([{str(SAMPLE_PHOTOS[0])!r}], progress=False)
assert not failures and isinstance(results[0]["count"], int), (results, failures)
assert "torch" not in sys.modules, "torch was imported"
print("count", results[0]["count"])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("count ")


# ---------------------------------------------------------------- int8


@pytest.mark.slow
def test_int8_export_records_accuracy_and_speed(tiny_artifact, small_data, tmp_path, monkeypatch):
    import bintally.export.onnx as onnx_export
    from bintally.inference import Counter
    from bintally.models.artifact import read_artifact

    monkeypatch.setattr(onnx_export, "SPEED_SECONDS", 1.0)
    out = tmp_path / "int8"
    result = run_cli("export", "--model", tiny_artifact.path, "--quantize", "int8", "--out", out, "--data", small_data, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "int8 validation" in result.stdout and "int8 speed (batch 8, 2 threads)" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["model.int8.onnx", "model.json"]
    exported = read_artifact(out)
    assert exported.runtime == "onnx" and exported.weights == "model.int8.onnx"
    info = exported.export
    assert info["quantization"]["format"] == "QDQ" and info["quantization"]["calibration_photos"] > 20
    validation, speed, size = info["validation"], info["speed"], info["size_bytes"]
    assert validation["photos"] > 20 and validation["split"] == "val"
    val_photos = read_manifest(small_data).query("split == 'val'")
    true_counts = val_photos["count"].clip(upper=tiny_artifact.labels.max_count + 1).to_numpy()  # 6+ scores as 6
    counts = {"fp32": photo_counts(Counter.load(tiny_artifact.path), val_photos["path"]),  # the fp32 export counts as PyTorch
              "int8": photo_counts(Counter.load(out, backend="onnx"), val_photos["path"])}
    assert validation["photos"] == len(val_photos)
    for model in ("fp32", "int8"):
        assert all(math.isfinite(validation[model][k]) for k in ("accuracy", "rmse", "mae", "within1"))
        assert validation[model]["accuracy"] == round(float(np.mean(counts[model] == true_counts)), 4)
        assert speed[f"{model}_images_per_s"] > 0 and speed[f"{model}_cpu_ms_per_image"] > 0
    assert speed["speedup"] == pytest.approx(speed["int8_images_per_s"] / speed["fp32_images_per_s"], rel=1e-2)
    assert size["int8"] < size["fp32"] and (out / "model.int8.onnx").stat().st_size == size["int8"]
    parity = counts["fp32"][:onnx_export.PARITY_PHOTOS] == counts["int8"][:onnx_export.PARITY_PHOTOS]
    assert info["parity"]["fp32"]["count_agreement"] == 1.0 and info["parity"]["int8"]["count_agreement"] == float(np.mean(parity))
    results, _ = Counter.load(out, backend="onnx").count_paths(photos(3), progress=False)
    assert len(results) == 3


@pytest.fixture(scope="module")
def spatial_run(tiny_manifest, tmp_path_factory) -> Path:
    """`--preset best`'s model in small: frozen EfficientNet-Lite0 (ImageNet weights) cut at stride 16, the conv head with
    its ordinal output over counts 0-5, trained for 3 epochs on the tiny split at 96 px."""
    from bintally.training import train
    from tests.training_helpers import tiny_config

    out = tmp_path_factory.mktemp("spatial") / "run"
    best = {k: v for k, v in PRESETS["best"].items() if k not in ("folds", "epochs", "batch_size", "image_size")}
    train(tiny_config(tiny_manifest, out, **best, backbone="efficientnet_lite0", pretrained=True, image_size=96, epochs=3))
    return out


@pytest.mark.slow
def test_int8_export_of_a_spatial_head_counts_as_pytorch(spatial_run, tiny_manifest, tmp_path):
    """The int8 export of the spatial head: pre-processed and quantised (its conv head included) with 8-bit weights (7-bit
    ones kept only 80% of its counts), and on real photos its counts and probabilities stay close to PyTorch's."""
    import onnx

    from bintally.data.images import decode_image
    from bintally.inference import Counter
    from bintally.inference.backends import TorchBackend
    from bintally.models.artifact import read_artifact

    source = read_artifact(spatial_run)
    assert source.model.features == "stride16" and source.model.head == "ordinal" and not source.labels.overflow
    out = tmp_path / "int8"
    result = run_cli("export", "--model", spatial_run, "--quantize", "int8", "--out", out, "--data", tiny_manifest, "--no-progress")
    assert result.returncode == 0, result.stderr
    exported = read_artifact(out)
    quantization, parity = exported.export["quantization"], exported.export["parity"]
    assert quantization["pre_process"] is True  # ONNX Runtime's symbolic shape inference fails on this head's ReduceMax
    graph = onnx.load(str(out / "model.int8.onnx")).graph
    quantized_convs = [n for n in graph.node if n.op_type == "Conv" and n.input[1].endswith("DequantizeLinear_Output")]
    assert len(quantized_convs) == sum(n.op_type == "Conv" for n in graph.node)  # the head's three convolutions too
    assert {"ReduceMax", "Gemm"} <= {n.op_type for n in graph.node}
    assert parity["fp32"]["count_agreement"] == 1.0 and parity["int8"]["photos"] == 56
    trials = quantization["calibration_count_agreement"]
    assert quantization["reduce_range"] is False and trials["8-bit"] > trials["7-bit"]
    assert parity["int8"]["count_agreement"] >= 0.9 and parity["int8"]["max_abs_diff"] < 0.1
    paths = photos(40, 700)
    counter = Counter.load(out, backend="onnx")
    images = np.stack([counter.preprocess(decode_image(p)) for p in paths])
    torch_probs, int8_probs = TorchBackend(source).probabilities(images), counter.probabilities(images)
    decode = lambda p: source.labels.decode(p, source.decoding)  # noqa: E731

    assert np.mean(decode(torch_probs) == decode(int8_probs)) >= 0.8  # flat probabilities: small changes move the median
    assert np.abs(torch_probs - int8_probs).max() < 0.06 and np.abs(torch_probs - int8_probs).mean() < 0.01
    np.testing.assert_allclose(int8_probs.sum(1), 1, atol=1e-4)
    counts = photo_counts(counter, paths)
    assert np.array_equal(counts, source.labels.count_of(decode(int8_probs)))


# ---------------------------------------------------------------- safetensors


def test_safetensors_export_copies_the_model(tiny_artifact, tmp_path):
    from bintally.models.artifact import read_artifact

    out = tmp_path / "copy"
    result = run_cli("export", "-m", tiny_artifact.path, "--format", "safetensors", "-o", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    copy = read_artifact(out)
    assert copy.version == tiny_artifact.version and copy.weights == tiny_artifact.weights and copy.runtime == "torch"
    assert (out / copy.weights).read_bytes() == tiny_artifact.weights_file.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(["model.json", copy.weights])


# ---------------------------------------------------------------- bad input, and nothing half-written


def test_existing_out_is_refused_then_replaced_with_overwrite(tiny_artifact, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli("export", "-m", tiny_artifact.path, "--format", "safetensors", "-o", out), str(out), "--overwrite")
    # --overwrite replaces only an earlier export (a folder with model.json), never some other folder
    assert_one_line_error(run_cli("export", "-m", tiny_artifact.path, "--format", "safetensors", "-o", out, "--overwrite"),
                          "model.json")
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert run_cli("export", "-m", tiny_artifact.path, "--format", "safetensors", "-o", out).returncode == 0
    again = run_cli("export", "-m", tiny_artifact.path, "--format", "safetensors", "-o", out, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert (out / "model.json").is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_never_replaces_its_own_source(tiny_artifact, tmp_path):
    model = tmp_path / "run" / "model"
    shutil.copytree(tiny_artifact.path, model)
    for out in (model, model.parent):
        assert_one_line_error(run_cli("export", "-m", model, "--format", "safetensors", "-o", out, "--overwrite"), "being exported")
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in tiny_artifact.path.iterdir())


@pytest.mark.parametrize("case", ["missing", "junk-json", "int8-safetensors", "bad-format", "bad-quantize",
                                  "out-is-file", "onnx-of-onnx"])
def test_bad_input_is_one_line_exit_2(case, tiny_artifact, tmp_path):
    model, out, extra, fragments = tiny_artifact.path, tmp_path / "out", [], []
    if case == "missing":
        model, fragments = tmp_path / "nope", [str(tmp_path / "nope"), "no such model"]
    elif case == "junk-json":
        model = tmp_path / "junk"
        model.mkdir()
        (model / "model.json").write_text("{not json")
        fragments = ["model.json", "not valid JSON"]
    elif case == "int8-safetensors":
        extra, fragments = ["--format", "safetensors", "--quantize", "int8"], ["--quantize int8", "onnx"]
    elif case == "bad-format":
        extra, fragments = ["--format", "tflite"], ["--format", "tflite"]
    elif case == "bad-quantize":
        extra, fragments = ["--quantize", "int4"], ["--quantize", "int4"]
    elif case == "out-is-file":
        out.write_text("x")
        fragments = [str(out), "is a file"]
    elif case == "onnx-of-onnx":
        model = tmp_path / "exported"
        model.mkdir()
        meta = json.loads((tiny_artifact.path / "model.json").read_text()) | {"runtime": "onnx", "weights": "model.onnx"}
        (model / "model.json").write_text(json.dumps(meta))
        (model / "model.onnx").write_bytes(b"onnx")
        fragments = ["already an ONNX export"]
    result = run_cli("export", "--model", model, "--out", out, "--no-progress", *extra)
    assert_one_line_error(result, *fragments)
    assert case == "out-is-file" or not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_failed_parity_leaves_nothing(tiny_artifact, small_data, tmp_path, monkeypatch):
    """ONNX counts that differ from PyTorch's on one photo: exit 2, one line, no folder."""
    import bintally.export.onnx as onnx_export
    import bintally.inference.onnx as onnx_graph

    def fake_export(artifact):
        (tmp_path / "fake.onnx").write_bytes(b"")  # never run: only the probabilities below matter
        return tmp_path / "fake.onnx"

    def drifting(artifact, model_file, images, batch_size=16):
        from bintally.inference.backends import TorchBackend

        probs = TorchBackend(artifact).probabilities(images)
        probs[0] = np.roll(probs[0], 1)  # another count for the first photo
        return probs

    monkeypatch.setattr(onnx_graph, "cached_onnx", fake_export)
    monkeypatch.setattr(onnx_export, "onnx_probabilities", drifting)
    out = tmp_path / "out"
    line = assert_one_line_error(run_cli("export", "-m", tiny_artifact.path, "-o", out, "--data", small_data, "--no-progress"),
                                 "other counts than PyTorch on 1 of", "nothing was written")
    assert "validation photos" in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["fake.onnx"]


def test_data_defaults_to_the_runs_own_split(tmp_path, small_data, monkeypatch):
    """No --data: RUN/manifest.parquet (a run that split its data), else train_config["data"], else the sample."""
    import pandas as pd

    import bintally.data.sample
    from bintally.export import training_data
    from bintally.models.artifact import read_artifact

    artifact = make_artifact(tmp_path / "run" / "model")
    monkeypatch.setattr(bintally.data.sample, "sample_manifest", lambda: pytest.fail("the sample was used"))
    shutil.copy(small_data, tmp_path / "run" / "manifest.parquet")
    df, source = training_data(artifact, None, progress=False)
    assert source == str(tmp_path / "run" / "manifest.parquet") and set(df["split"]) >= {"train", "val"}
    (tmp_path / "run" / "manifest.parquet").unlink()
    artifact = read_artifact(artifact.path)
    relative = os.path.relpath(small_data, tmp_path)
    monkeypatch.chdir(tmp_path)
    df, source = training_data(replace(artifact, train_config={"data": relative}), None, progress=False)
    assert source == relative and len(df) == len(pd.read_parquet(small_data))
    with pytest.raises(DataError, match="--data"):
        training_data(replace(artifact, train_config={"data": "gone.parquet"}), None, progress=False)


@pytest.mark.slow
def test_killed_export_leaves_no_folder(tiny_artifact, small_data, tmp_path):
    """kill -9 in the middle of an export: no export folder, no cached file; the next export removes the leftovers."""
    out, cache = tmp_path / "killed", tmp_path / "cache"
    env = os.environ | {"BINTALLY_CACHE": str(cache)}  # an empty cache: the ONNX export itself is under way when killed
    proc = subprocess.Popen([sys.executable, "-m", "bintally", "export", "-m", str(tiny_artifact.path), "-o", str(out), "--data",
                             str(small_data), "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(cache.glob("onnx/.*.lock")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the ONNX export starts as it takes the cache's lock
        time.sleep(0.5)
        assert proc.poll() is None, "the export ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert not out.exists()
    assert list(tmp_path.glob(".killed.*.tmp"))  # the staging folder the dead process left
    assert not list((cache / "onnx").glob("*.onnx"))  # and no cached model: at most a temporary file
    done = run_cli("export", "-m", tiny_artifact.path, "--format", "safetensors", "-o", out)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob(".killed.*"))


def test_no_tta_export_counts_the_photo_alone(tiny_artifact, small_data, tmp_path):
    from bintally.data.images import decode_image
    from bintally.inference import Counter
    from bintally.inference.backends import TorchBackend
    from bintally.models.artifact import read_artifact

    out = tmp_path / "no-tta"
    result = run_cli("export", "--model", tiny_artifact.path, "--out", out, "--no-tta", "--data", small_data, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "same count on 100.0%" in result.stdout
    exported = read_artifact(out)
    assert exported.tta is False and tiny_artifact.tta is True
    counter = Counter.load(out, backend="onnx")
    images = np.stack([counter.preprocess(decode_image(p)) for p in photos(6)])
    alone = TorchBackend(replace(tiny_artifact, tta=False)).probabilities(images)
    averaged = TorchBackend(tiny_artifact).probabilities(images)
    assert np.abs(counter.probabilities(images) - alone).max() < 1e-4
    assert np.abs(alone - averaged).max() > 1e-4  # the override changed the computation, not just the label
    assert_one_line_error(run_cli("export", "--model", tiny_artifact.path, "--out", tmp_path / "st", "--format", "safetensors",
                                  "--no-tta"), "--format onnx only")
