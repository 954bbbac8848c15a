"""The model as an ONNX graph, and the cached export that lets a PyTorch model run on ONNX Runtime.

The exported graph is the one probability path (`ProbabilityModel`): pre-processed photos
"images" [batch, 3, S, S] (float32, any batch size) -> "probabilities" [batch, n_classes].
With test-time augmentation both views (the photo and its mirror image) go through the backbone
in one pass; the probabilities are the same, and the graph holds each weight once (two backbone
calls would make int8 quantisation store every weight twice).

Importing this module needs no torch; exporting does (running an export never does).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

from bintally.errors import DataError
from bintally.inference.signature import ARRAY_INPUT
from bintally.io import atomic_path
from bintally.settings import Backend

log = logging.getLogger("bintally.export")

DEFAULT_OPSET = 18  # ONNX Runtime >= 1.14, Triton and most other runtimes read it
INPUT_NAME, OUTPUT_NAME = ARRAY_INPUT, "probabilities"
MAX_BATCH = 4096  # the largest batch the graph declares (torch.export needs a bound)


def export_module(artifact):
    """The one probability path, `ProbabilityModel`, of a PyTorch artifact: in eval mode, float32, on the CPU."""
    from bintally.models.artifact import load_model
    from bintally.models.model import ProbabilityModel

    return ProbabilityModel(load_model(artifact), artifact.tta).eval().float().cpu()


def export_onnx(artifact, out_file: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write the model of a PyTorch artifact as one self-contained .onnx file (written whole or not at all)."""
    import onnx
    import torch

    if artifact.runtime != Backend.TORCH:
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


def cached_onnx(artifact) -> Path:
    """The ONNX export of a PyTorch artifact, made once per model version in the cache (an ONNX artifact: its own file).

    Concurrent processes take turns on a lock; each export is written to a temporary file and renamed.
    """
    from bintally.paths import cache_dir

    if artifact.runtime == Backend.ONNX:
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
