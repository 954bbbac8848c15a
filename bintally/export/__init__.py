"""`bintally export`: a trained model as a self-contained folder to serve or hand on.

    --format onnx          model.onnx + model.json (runtime "onnx"): runs on ONNX Runtime without torch.
                           Checked before anything is written: on real validation photos, the counts of
                           the ONNX model and of PyTorch must agree on every photo.
    --format onnx --quantize int8
                           model.int8.onnx + model.json: static int8 quantisation calibrated on training
                           photos; model.json records the validation accuracy and RMSE of the float and
                           the int8 model and the measured speed-up. One export folder holds one model.
    --format safetensors   a copy of the PyTorch model artifact.

The folder is built beside the destination and renamed into place when complete: an export that
fails or is killed leaves no half-written folder, and an existing one is replaced only with
`overwrite` (and only if it holds a model).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from bintally.errors import ConfigError, DataError
from bintally.export.config import FORMATS, QUANTIZATIONS
from bintally.io import TEMP_PATTERN, check_output_folder, given_path, pid_alive
from bintally.models.artifact import META_FILE, RUN_SUBDIR, ModelArtifact, read_artifact
from bintally.settings import Backend

log = logging.getLogger("bintally.export")

ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
MAX_VALIDATION_PHOTOS = 2000  # int8 is scored on at most this many validation photos


@dataclass
class ExportResult:
    out: Path  # the export folder
    format: str
    artifact: ModelArtifact  # the exported model, as read back from out
    source: str  # the model that was exported
    parity: dict = field(default_factory=dict)  # "fp32" (and "int8"): photos, max_abs_diff, count_agreement
    int8: dict = field(default_factory=dict)  # validation metrics of both models and the speed-up, for --quantize int8


def export(model_path: str | Path, out_dir: str | Path, format: str = "onnx", quantize: str | None = None, overwrite: bool = False,
           data: str | Path | None = None, progress: bool = True, tta: bool | None = None) -> ExportResult:
    """Export the model at `model_path` (a run, its model/ folder, or a model folder) into `out_dir`.

    `tta` overrides the model's test-time augmentation in an ONNX export (False: half the compute per photo, and
    the probabilities of the photo alone); None keeps the model's own setting.
    """
    if tta is not None and (format != "onnx" or not isinstance(tta, bool)):
        raise ConfigError("--tta/--no-tta applies to --format onnx only (a safetensors export is the PyTorch model as it is)")
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"unknown quantisation {quantize!r}: use {' or '.join(QUANTIZATIONS)}, or leave it out")
    if quantize and format != "onnx":
        raise ConfigError(f"--quantize {quantize} applies to --format onnx only (a safetensors export is the PyTorch model as it is)")
    model_path = given_path(model_path, "model path")
    out = check_output_folder(out_dir)
    source = read_artifact(model_path)
    check_not_inside(out, source.path)
    if source.runtime != Backend.TORCH:
        raise ConfigError(f"{source.path} is already an ONNX export: export from the training run (or its model/ folder) instead")
    check_out(out, overwrite)
    with staged_folder(out, overwrite) as staging:
        if format == "safetensors":
            result = ExportResult(out, format, write_safetensors(source, staging), str(model_path))
        else:
            torch_artifact = source if tta is None else replace(source, tta=tta)
            result = write_onnx(torch_artifact, model_path, staging, quantize, data, progress)
        read_artifact(staging)  # the folder reads back as a model before it takes its place
    result.out, result.artifact = out, read_artifact(out)
    return result


# ---------------------------------------------------------------- the source model


def write_safetensors(source: ModelArtifact, staging: Path) -> ModelArtifact:
    """A copy of the model artifact."""
    shutil.copyfile(source.weights_file, staging / source.weights)
    artifact = replace(source, path=staging, export={"format": "safetensors", "source": {"path": str(source.path), "version": source.version},
                                                     "exported": now()})
    artifact.write_metadata()
    return artifact


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------- ONNX


def write_onnx(artifact: ModelArtifact, model_path: Path, staging: Path, quantize: str | None,
               data: str | Path | None, progress: bool) -> ExportResult:
    import onnx
    import onnxruntime
    import torch

    from bintally import __version__
    from bintally.export import onnx as onnx_export
    from bintally.inference import onnx as onnx_graph

    photos, data_source = validation_and_training_photos(artifact, data, quantize is not None, progress)
    fp32_file = staging / ONNX_FILE
    shutil.copyfile(onnx_graph.cached_onnx(artifact), fp32_file)  # the export --backend onnx made of this model version, or made now
    val_images, val_paths = onnx_export.load_photos(photos["val"]["path"].head(MAX_VALIDATION_PHOTOS if quantize else onnx_export.PARITY_PHOTOS),
                                                    artifact.transform, progress, desc="reading validation photos")
    kept = photos["val"].set_index("path").loc[val_paths]
    say(progress, "checking the ONNX model against PyTorch")
    n_parity = min(len(val_images), onnx_export.PARITY_PHOTOS)
    reference = onnx_export.torch_probabilities(artifact, val_images[:n_parity])
    fp32_probs = onnx_export.onnx_probabilities(artifact, fp32_file, val_images)
    parity = {"fp32": onnx_export.compare(artifact, reference, fp32_probs[:n_parity])}
    if parity["fp32"]["count_agreement"] < 1.0:
        p = parity["fp32"]
        disagree = round((1 - p["count_agreement"]) * p["photos"])
        raise DataError(model_path, f"the ONNX export gives other counts than PyTorch on {disagree} of {p['photos']} validation photos "
                                    f"(largest probability difference {p['max_abs_diff']:.2g}); nothing was written")
    weights, quantization, int8 = ONNX_FILE, None, {}
    if quantize:
        int8_file = staging / INT8_FILE
        train_images, _ = onnx_export.load_photos(photos["train"]["path"], artifact.transform, progress, desc="reading calibration photos")
        say(progress, f"quantising to int8 (calibrating on {len(train_images)} training photos)")
        quantization = onnx_export.quantize_int8(fp32_file, int8_file, train_images, artifact)
        int8_probs = onnx_export.onnx_probabilities(artifact, int8_file, val_images)
        parity["int8"] = onnx_export.compare(artifact, reference, int8_probs[:n_parity])
        say(progress, "measuring the speed of both models")
        speed = onnx_export.compare_speed({"fp32": fp32_file, "int8": int8_file}, val_images)
        int8 = {"validation": {"split": "val", "photos": len(val_images),
                               "fp32": validation_metrics(artifact, kept["label"], fp32_probs),
                               "int8": validation_metrics(artifact, kept["label"], int8_probs),
                               "count_agreement": onnx_export.compare(artifact, fp32_probs, int8_probs)["count_agreement"]},
                "speed": {"batch_size": onnx_export.SPEED_BATCH, "threads": onnx_export.SPEED_THREADS,
                          "fp32_images_per_s": round(speed["fp32"]["images_per_s"], 2),
                          "int8_images_per_s": round(speed["int8"]["images_per_s"], 2),
                          "speedup": round(speed["int8"]["images_per_s"] / speed["fp32"]["images_per_s"], 3),
                          "fp32_cpu_ms_per_image": round(speed["fp32"]["cpu_ms_per_image"], 2),
                          "int8_cpu_ms_per_image": round(speed["int8"]["cpu_ms_per_image"], 2),
                          "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None},
                "size_bytes": {"fp32": onnx_export.file_size(fp32_file), "int8": onnx_export.file_size(int8_file)}}
        fp32_file.unlink()  # one export folder, one model: the int8 one
        weights = INT8_FILE
    meta = onnx_export.onnx_metadata(staging / weights)
    info = {"format": "onnx", "exported": now(), "bintally": __version__,
            "source": {"path": str(model_path), "version": artifact.version},
            "exporter": f"torch.onnx ({meta.get('bintally_exporter', 'unknown')}), torch {torch.__version__}, onnx {onnx.__version__}",
            "opset": onnx_graph.DEFAULT_OPSET, "onnxruntime": onnxruntime.__version__, "data": data_source,
            "quantization": quantization, "parity": parity, **int8}
    exported = replace(artifact, path=staging, weights=weights, runtime=Backend.ONNX.value, version=onnx_export.file_digest(staging / weights)[:12],
                       export=info, created=now())
    exported.write_metadata()
    return ExportResult(staging, "onnx", exported, str(model_path), parity, int8)


def validation_metrics(artifact: ModelArtifact, labels, probs) -> dict:
    """Accuracy, RMSE, MAE and within-one accuracy of the counts over all photos, as evaluate computes them."""
    from bintally.evaluation.metrics import count_metrics

    space = artifact.labels
    scoring = space.with_overflow()  # photos above N score as N+1 even without an overflow class
    true = scoring.count_of(labels.to_numpy(dtype=int))
    predicted = space.count_of(space.decode(probs, artifact.decoding))
    metrics = count_metrics(true, predicted, space.max_count)
    return {key: round(metrics[key], 4) for key in ("accuracy", "rmse", "mae", "within1")}


def say(progress: bool, message: str) -> None:
    if progress:
        log.info("%s ...", message)


# ---------------------------------------------------------------- the photos the export is checked on


def validation_and_training_photos(artifact: ModelArtifact, data: str | Path | None, training: bool, progress: bool):
    """{"val": rows, "train": rows (for calibration)} of the model's data, and where they came from."""
    from bintally.evaluation.evaluate import evaluation_photos

    df, source = training_data(artifact, data, progress)
    val, info = evaluation_photos(df, "val", artifact.labels)
    photos = {"val": val}
    if training:
        if info.get("no_split_column"):
            raise DataError(source, "int8 quantisation needs split data (training photos to calibrate on, validation photos "
                                    "to score it on): give a split manifest with --data (`bintally data split`)")
        train, _ = evaluation_photos(df, "train", artifact.labels)
        from bintally.export.onnx import CALIBRATION_PHOTOS

        photos["train"] = train.sample(min(CALIBRATION_PHOTOS, len(train)), random_state=0) if len(train) > CALIBRATION_PHOTOS else train
    elif info.get("no_split_column"):
        log.info("%s has no split column: checking the export on its first photos", source)
    return photos, source


def training_data(artifact: ModelArtifact, data: str | Path | None, progress: bool):
    """The model's photos: `data`; else the run's own split (RUN/manifest.parquet); else its training data; else the bundled sample."""
    from bintally.data.sample import read_or_index

    if data is not None:
        return read_or_index(data, progress=progress), str(data)
    run = artifact.path.parent if artifact.path.name == RUN_SUBDIR else artifact.path
    if (run / "manifest.parquet").is_file():
        return read_or_index(run / "manifest.parquet", progress=progress), str(run / "manifest.parquet")
    trained_on = artifact.train_config.get("data")
    if trained_on:
        found = find_relative(Path(trained_on), run)
        if found is None:
            raise DataError(trained_on, "the model's training data is not here (needed for validation photos to check the "
                                        "export on): give the data with --data")
        return read_or_index(found, progress=progress), str(trained_on)
    return read_or_index(None, progress=progress), "the bundled sample"


def find_relative(path: Path, run: Path) -> Path | None:
    """`path` as given (relative to the current folder), or relative to the run folder or one above it (where training ran)."""
    if path.exists():
        return path
    if not path.is_absolute():
        for folder in (run, *list(run.resolve().parents)[:3]):
            if (folder / path).exists():
                return folder / path
    return None


# ---------------------------------------------------------------- the export folder


def check_out(out_dir: str | Path, overwrite: bool) -> Path:
    """The export folder: new, empty, or (with overwrite) an earlier export; checked before any work."""
    out = check_output_folder(out_dir)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(out, "already exists and is not empty: choose a new folder, or pass --overwrite to replace it")
        if not (out / META_FILE).is_file():
            raise DataError(out, f"not replaced: it holds no {META_FILE}, so it is no earlier export (--overwrite replaces only a model folder)")
    return out


def check_not_inside(out: Path, source: Path) -> None:
    """The export may not replace the model it exports (or a folder holding it)."""
    out, source = out.resolve(), source.resolve()
    if out == source or out in source.parents:
        raise DataError(out, f"holds the model being exported ({source}): choose another folder")


@contextlib.contextmanager
def staged_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden folder beside `out` to build the export in; renamed to `out` when complete, removed otherwise."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(out)
    staging = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        yield staging
        if out.is_dir() and any(out.iterdir()):
            old = out.parent / f".{out.name}.old.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)  # replaces an empty folder
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def remove_stale_folders(out: Path) -> None:
    """Folders of exports to `out` that were killed: removed; an earlier export moved aside when killed: put back."""
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        match = TEMP_PATTERN.match(tmp.name)
        if not match or match["name"] not in (out.name, f"{out.name}.old") or pid_alive(int(match["pid"])) or not tmp.is_dir():
            continue
        if match["name"] == f"{out.name}.old" and not out.exists():
            os.replace(tmp, out)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["FORMATS", "QUANTIZATIONS", "ExportResult", "export"]
