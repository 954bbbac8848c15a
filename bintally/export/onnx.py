"""The model as an ONNX graph: export, a cached export per model version, the parity check, int8 quantisation.

The exported graph is the one probability path (`ProbabilityModel`): pre-processed photos
"images" [batch, 3, S, S] (float32, any batch size) -> "probabilities" [batch, n_classes].
With test-time augmentation both views (the photo and its mirror image) go through the backbone
in one pass; the probabilities are the same, and the graph holds each weight once (two backbone
calls would make int8 quantisation store every weight twice).

Importing this module needs no torch; exporting does (running an export never does).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from bintally.errors import DataError
from bintally.io import atomic_path

log = logging.getLogger("bintally.export")

DEFAULT_OPSET = 18  # ONNX Runtime >= 1.14, Triton and most other runtimes read it
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
MAX_BATCH = 4096  # the largest batch the graph declares (torch.export needs a bound)
PARITY_PHOTOS = 64
CALIBRATION_PHOTOS = 128
SPEED_BATCH, SPEED_THREADS = 8, 2
SPEED_SECONDS = 8.0  # time spent measuring each model's speed (in interleaved rounds)
HEAD_OPS = ("Gemm", "MatMul", "Softmax", "Sigmoid", "CumSum", "Softplus")  # the head after the backbone stays float


# ---------------------------------------------------------------- export


def export_module(artifact):
    """The one probability path, `ProbabilityModel`, of a PyTorch artifact: in eval mode, float32, on the CPU."""
    from bintally.models.artifact import load_model
    from bintally.models.model import ProbabilityModel

    return ProbabilityModel(load_model(artifact), artifact.tta).eval().float().cpu()


def export_onnx(artifact, out_file: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write the model of a PyTorch artifact as one self-contained .onnx file (written whole or not at all)."""
    import onnx
    import torch

    if artifact.runtime != "torch":
        raise DataError(artifact.path, "already an ONNX export: export from the training run's model instead")
    out_file = Path(out_file)
    net = export_module(artifact)
    size = artifact.transform.image_size
    example = torch.rand(2, 3, size, size)  # not 1: torch.export would take a batch of 1 for a constant
    with atomic_path(out_file) as tmp:
        exporter = graph_to_file(net, example, tmp, opset)
        graph = onnx.load(str(tmp))
        add_metadata(graph, {"bintally_model": artifact.name, "bintally_model_version": artifact.version,
                             "bintally_tta": str(artifact.tta).lower(), "bintally_exporter": exporter})
        onnx.checker.check_model(graph)
        onnx.save_model(graph, str(tmp), save_as_external_data=False)
    return out_file


def graph_to_file(net, example, path: Path, opset: int) -> str:
    """Export with torch.export (the default exporter of torch >= 2.9), else the TorchScript exporter; the one used."""
    import torch

    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    with warnings.catch_warnings(), quiet_loggers("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(net, (example,), dynamo=True, verbose=False, optimize=True,
                                        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}}, **names)
            program.save(str(path), external_data=False)
            return "dynamo"
        except Exception as e:  # a backbone torch.export cannot trace: the older exporter handles more Python
            log.debug("torch.export-based ONNX export failed (%s); using the TorchScript exporter", e)
        torch.onnx.export(net, (example,), str(path), dynamo=False, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          **names)
        return "torchscript"


def add_metadata(graph, values: dict[str, str]) -> None:
    known = {p.key: p for p in graph.metadata_props}
    for key, value in values.items():
        entry = known.get(key) or graph.metadata_props.add()
        entry.key, entry.value = key, value


def onnx_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def cached_onnx(artifact) -> Path:
    """The ONNX export of a PyTorch artifact, made once per model version in the cache (an ONNX artifact: its own file).

    Concurrent processes take turns on a lock; each export is written to a temporary file and renamed.
    """
    from bintally.paths import cache_dir

    if artifact.runtime == "onnx":
        return artifact.weights_file
    folder = cache_dir() / "onnx"
    path = folder / f"{artifact.version}-tta{int(artifact.tta)}-s{artifact.transform.image_size}.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / f".{path.name}.lock"):
        if not path.is_file():
            log.info("exporting the model to ONNX (once per model version; cached as %s)", path)
            export_onnx(artifact, path)
    return path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, released when the holder exits or is killed."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic renames still keep the file whole
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- photos and runtimes


def load_photos(paths: Sequence[str | Path], transform, progress: bool = False, desc: str = "reading photos") -> tuple[np.ndarray, list[str]]:
    """Pre-processed photos [N, 3, S, S] (as every backend receives them) and their paths; unreadable ones are skipped."""
    from bintally.data.images import decode_image
    from bintally.data.transforms import preprocess
    from bintally.progress import progress_bar

    arrays, kept = [], []
    for path in progress_bar(list(paths), desc=desc, unit="img", enabled=progress):
        try:
            arrays.append(preprocess(decode_image(path), transform))
            kept.append(str(path))
        except DataError as e:
            log.warning("%s (skipped)", e)
    size = transform.image_size
    return (np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.float32)), kept


def batched(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([run(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def onnx_probabilities(artifact, model_file: str | Path, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    from bintally.inference.backends import OnnxBackend

    return batched(OnnxBackend(artifact, model_file=model_file).probabilities, images, batch_size)


def torch_probabilities(artifact, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    from bintally.inference.backends import TorchBackend

    return batched(TorchBackend(artifact).probabilities, images, batch_size)


# ---------------------------------------------------------------- the parity check


def compare(artifact, reference: np.ndarray, probs: np.ndarray) -> dict:
    """How far `probs` is from the `reference` probabilities of the same photos, and how often the counts agree."""
    if not len(reference):
        raise DataError(artifact.path, "no readable photos to check the export on")
    decode = lambda p: artifact.labels.decode(p, artifact.decoding)  # noqa: E731
    return {"photos": int(len(reference)), "max_abs_diff": float(np.abs(reference - probs).max()),
            "count_agreement": float((decode(reference) == decode(probs)).mean())}


def parity_arrays(artifact_torch, onnx_file: str | Path, images: np.ndarray, batch_size: int = 16) -> dict:
    """The parity check on pre-processed photos: PyTorch against ONNX Runtime, through the inference backends."""
    from bintally.inference.backends import OnnxBackend, TorchBackend

    if not len(images):
        raise DataError(onnx_file, "no readable photos to check the export on")
    reference = batched(TorchBackend(artifact_torch).probabilities, images, batch_size)
    return compare(artifact_torch, reference, batched(OnnxBackend(artifact_torch, model_file=onnx_file).probabilities, images, batch_size))


def parity(artifact_torch, onnx_file: str | Path, photos: Sequence[str | Path], batch_size: int = 16) -> dict:
    """{"photos", "max_abs_diff", "count_agreement"} of the ONNX model against PyTorch on the same real photos."""
    images, _ = load_photos(photos, artifact_torch.transform)
    return parity_arrays(artifact_torch, onnx_file, images, batch_size)


# ---------------------------------------------------------------- int8


class PhotoBatches:
    """A CalibrationDataReader over pre-processed photos (onnxruntime only asks for get_next)."""

    def __init__(self, images: np.ndarray, batch_size: int = 16):
        self.batches = iter([{INPUT_NAME: np.ascontiguousarray(images[i:i + batch_size])} for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)

    def rewind(self) -> None:  # pragma: no cover - onnxruntime calls it on some code paths
        pass


def head_nodes(model_file: str | Path) -> list[str]:
    """The nodes after the backbone's last convolution: the small head, which stays float (quantising it costs accuracy, saves nothing)."""
    import onnx

    nodes = onnx.load(str(model_file), load_external_data=False).graph.node
    last_conv = max((i for i, n in enumerate(nodes) if n.op_type == "Conv"), default=-1)
    return [n.name for n in nodes[last_conv + 1:] if n.op_type in HEAD_OPS and n.name]


def quantize_int8(fp32_file: str | Path, out_file: str | Path, calibration_photos, artifact) -> dict:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on real photos; the settings used.

    `calibration_photos`: photo paths (training photos, not validation ones), or photos already
    pre-processed [N, 3, S, S].
    """
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = calibration_photos if isinstance(calibration_photos, np.ndarray) else load_photos(calibration_photos, artifact.transform)[0]
    if not len(images):
        raise DataError(fp32_file, "no readable photos to calibrate the int8 model on")
    out_file = Path(out_file)
    settings = {"type": "int8", "method": "static", "format": "QDQ", "weights": "int8, per channel", "activations": "uint8",
                "reduce_range": True, "calibration": "minmax", "calibration_photos": int(len(images))}
    with tempfile.TemporaryDirectory(prefix="bintally-quantize-") as work:
        source = Path(work) / "pre.onnx"
        try:  # shape inference and graph optimisation first (batch norms folded into convolutions)
            with warnings.catch_warnings(), quiet_loggers(""):
                warnings.simplefilter("ignore")
                quant_pre_process(str(fp32_file), str(source))
            settings["pre_process"] = True
        except Exception as e:  # quantisation works without it, a little less well
            log.debug("quant_pre_process failed (%s): quantising the exported graph as it is", e)
            source, settings["pre_process"] = Path(fp32_file), False
        keep_float = head_nodes(source)
        settings["float_nodes"] = keep_float
        with atomic_path(out_file) as tmp, warnings.catch_warnings(), quiet_loggers(""):
            warnings.simplefilter("ignore")
            quantize_static(str(source), str(tmp), PhotoBatches(images), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_float)
    return settings


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Silence the INFO chatter of the exporter's graph passes (onnxscript, onnx_ir) and the advice
    onnxruntime.quantization logs through the root logger ("" names it)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, level))
    try:
        yield
    finally:
        for logger, old in zip(loggers, levels):
            logger.setLevel(old)


# ---------------------------------------------------------------- speed


def compare_speed(model_files: dict[str, str | Path], images: np.ndarray, batch_size: int = SPEED_BATCH, threads: int = SPEED_THREADS,
                  seconds: float = SPEED_SECONDS, rounds: int = 5) -> dict[str, dict[str, float]]:
    """Per model: images per second on the same batch and CPU time per image (all threads), each the median over
    interleaved rounds, so that another process taking the CPU for a while slows every model alike."""
    if not len(images):
        raise ValueError("no photos to time the models on")
    batch = np.ascontiguousarray(np.resize(images, (batch_size, *images.shape[1:])), np.float32)
    from bintally.inference.backends import onnx_session

    sessions = {name: onnx_session(path, threads) for name, path in model_files.items()}
    feed = {INPUT_NAME: batch}
    for session in sessions.values():  # warm up, and find how many runs fill a round
        session.run([OUTPUT_NAME], feed)
    runs = {}
    for name, session in sessions.items():
        start = time.perf_counter()
        session.run([OUTPUT_NAME], feed)
        runs[name] = max(1, int(seconds / len(sessions) / rounds / max(time.perf_counter() - start, 1e-6)))
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    cpu: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(runs[name]):
                session.run([OUTPUT_NAME], feed)
            images_done = runs[name] * batch_size
            rates[name].append(images_done / (time.perf_counter() - start))
            cpu[name].append((time.process_time() - start_cpu) * 1000 / images_done)
    return {name: {"images_per_s": float(np.median(rates[name])), "cpu_ms_per_image": float(np.median(cpu[name]))} for name in sessions}


def file_size(path: str | Path) -> int:
    return os.path.getsize(path)
