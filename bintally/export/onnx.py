"""What `bintally export --format onnx` adds to the cached ONNX graph (`bintally.inference.onnx`): the parity check
against PyTorch, int8 quantisation and the speed comparison.

Importing this module needs no torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bintally.errors import DataError
from bintally.inference.onnx import INPUT_NAME, OUTPUT_NAME, quiet_loggers
from bintally.io import atomic_path

log = logging.getLogger("bintally.export")

PARITY_PHOTOS = 64
CALIBRATION_PHOTOS = 128
SPEED_BATCH, SPEED_THREADS = 8, 2
SPEED_SECONDS = 8.0  # time spent measuring each model's speed (in interleaved rounds)


# ---------------------------------------------------------------- the exported file


def onnx_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


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
    if not len(images):
        raise DataError(onnx_file, "no readable photos to check the export on")
    reference = torch_probabilities(artifact_torch, images, batch_size)
    return compare(artifact_torch, reference, onnx_probabilities(artifact_torch, onnx_file, images, batch_size))


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
    """The nodes after the last convolution: pooling, the output head, the probabilities and their flip average stay float
    (quantising them costs accuracy and saves nothing; quantised, an ordinal head's probabilities no longer summed to 1)."""
    import onnx

    nodes = onnx.load(str(model_file), load_external_data=False).graph.node
    last_conv = max((i for i, n in enumerate(nodes) if n.op_type == "Conv"), default=-1)
    return [n.name for n in nodes[last_conv + 1:] if n.name]


def pre_process(fp32_file: str | Path, out_file: Path) -> tuple[Path, bool]:
    """The graph to quantise: shape-inferred and optimised by `quant_pre_process` (batch norms folded into convolutions),
    and whether that worked; else the exported graph as it is (quantisation works without it, a little less well).

    ONNX Runtime's symbolic shape inference gives no shape to an opset-18 ReduceMax (the spatial head's max pooling), and
    fails on the Concat after it: the graph is then pre-processed with ONNX's own shape inference, which handles it and is
    all a graph with one dynamic batch axis needs.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    for skip_symbolic_shape in (False, True):
        try:
            with warnings.catch_warnings(), quiet_loggers(""):
                warnings.simplefilter("ignore")
                quant_pre_process(str(fp32_file), str(out_file), skip_symbolic_shape=skip_symbolic_shape)
            return out_file, True
        except Exception as e:
            log.debug("quant_pre_process (skip_symbolic_shape=%s) failed: %s", skip_symbolic_shape, e)
    return Path(fp32_file), False


def quantize_int8(fp32_file: str | Path, out_file: str | Path, calibration_photos, artifact) -> dict:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on real photos; the settings used.

    `calibration_photos`: photo paths (training photos, not validation ones), or photos already
    pre-processed [N, 3, S, S]. Weights are quantised both in 7 bits (`reduce_range`) and in 8, and the model whose
    counts agree more often with the float model's on the calibration photos is kept: 7 bits suited a pooled linear
    head (88% against 74% of counts kept), 8 bits the stride-16 spatial head (98% against 80%).
    """
    import tempfile

    images = calibration_photos if isinstance(calibration_photos, np.ndarray) else load_photos(calibration_photos, artifact.transform)[0]
    if not len(images):
        raise DataError(fp32_file, "no readable photos to calibrate the int8 model on")
    out_file = Path(out_file)
    settings = {"type": "int8", "method": "static", "format": "QDQ", "weights": "int8, per channel", "activations": "uint8",
                "calibration": "minmax", "calibration_photos": int(len(images))}
    with tempfile.TemporaryDirectory(prefix="bintally-quantize-") as work:
        source, settings["pre_process"] = pre_process(fp32_file, Path(work) / "pre.onnx")
        settings["float_nodes"] = head_nodes(source)
        reference = onnx_probabilities(artifact, source, images)
        agreement = {}
        for reduce_range in (True, False):
            candidate = Path(work) / f"int8-{reduce_range}.onnx"
            quantize_static_qdq(source, candidate, images, settings["float_nodes"], reduce_range)
            agreement[reduce_range] = compare(artifact, reference, onnx_probabilities(artifact, candidate, images))["count_agreement"]
        settings["reduce_range"] = max(agreement, key=agreement.get)  # 7 bits on a tie
        settings["calibration_count_agreement"] = {"7-bit": agreement[True], "8-bit": agreement[False]}
        with atomic_path(out_file) as tmp:
            os.replace(Path(work) / f"int8-{settings['reduce_range']}.onnx", tmp)
    return settings


def quantize_static_qdq(source: Path, out_file: Path, images: np.ndarray, keep_float: list[str], reduce_range: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with warnings.catch_warnings(), quiet_loggers(""):
        warnings.simplefilter("ignore")
        quantize_static(str(source), str(out_file), PhotoBatches(images), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_float)


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
