"""Models saved by bintally before the model artifact (a run's best.pt), and their one-command conversion.

A best.pt is loaded with `weights_only=True`: loading a model someone hands you must not run
their code. Every way it can be wrong is a DataError naming the file.
"""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from pathlib import Path

import torch

from bintally.data.transforms import TransformConfig
from bintally.errors import ConfigError, DataError
from bintally.io import given_path
from bintally.models.artifact import ModelArtifact, save_model
from bintally.models.model import CountingModel, ModelConfig, weights_problem

MODEL_FILE = "best.pt"
# what best.pt holds, and the type of each entry
MODEL_FIELDS = {"model_config": dict, "transform": dict, "state_dict": dict, "classes": list}
# the first bytes of files people pass by mistake
FILE_KINDS = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"{": "JSON text", b"[": "JSON text",
              b"PAR1": "a Parquet file", b"#": "a text file"}
CHECKPOINT_HINT = "a training checkpoint, not a model: pass the run directory or its best.pt"


def convert_legacy(path: str | Path, out: str | Path) -> ModelArtifact:
    """Convert a best.pt written by bintally before the model artifact into one (safetensors + model.json) in `out`."""
    file = model_file(given_path(path, "model path"))
    saved = read_model_file(file)
    check_fields(file, saved)
    model, transform = build_model(file, saved)
    train_config = saved.get("train_config") if isinstance(saved.get("train_config"), dict) else {}
    metrics = saved.get("metrics") if isinstance(saved.get("metrics"), dict) else {}
    return save_model(out, model, transform, bool(train_config.get("tta", True)), train_config, metrics)


# ---------------------------------------------------------------- reading and checking a model file


def model_file(path: Path) -> Path:
    """The model file a path names: itself, or the best.pt of a run directory."""
    if not path.exists():
        raise DataError(path, "no such model: pass a run directory or its best.pt")
    if path.is_dir():
        if not (path / MODEL_FILE).exists():
            raise DataError(path, f"no {MODEL_FILE} in this folder: pass a run directory holding {MODEL_FILE} "
                                  f"(written when training first validates), or a {MODEL_FILE} file")
        path = path / MODEL_FILE
    if not path.is_file():
        raise DataError(path, "is not a file: pass a run directory or its best.pt")
    return path


def looks_like_checkpoint(file: Path) -> bool:
    """Whether a file torch will not load safely is a training checkpoint: by its name, or by its keys (read without unpickling)."""
    if file.name == "last.pt" or file.parent.name == "checkpoints":
        return True
    try:
        with zipfile.ZipFile(file) as archive:
            pickled = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
        strings = {arg for _, arg, _ in pickletools.genops(pickled) if isinstance(arg, str)}
    except Exception:  # not a readable archive or pickle: then it is no checkpoint either
        return False
    return {"model", "optimizer"} <= strings and "state_dict" not in strings


def read_model_file(file: Path) -> object:
    try:
        with open(file, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise DataError(file, f"cannot read the model ({e.strerror or e})") from None
    if not head:
        raise DataError(file, "empty file, not a model")
    if not head.startswith(b"PK"):  # every torch.save since PyTorch 1.6 writes a zip archive
        kind = next((name for magic, name in FILE_KINDS.items() if head.startswith(magic)), "")
        raise DataError(file, f"not a PyTorch model file{f' (it is {kind})' if kind else ''}")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if looks_like_checkpoint(file):
            raise DataError(file, CHECKPOINT_HINT) from None
        raise DataError(file, "holds Python objects, not just weights: refused, since loading it could run code") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, ... for a damaged archive
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise DataError(file, f"truncated or damaged model file ({first_line})") from None


def check_fields(file: Path, saved: object) -> None:
    """best.pt's entries are all there, with the right types."""
    if isinstance(saved, dict) and {"model", "optimizer"} <= set(saved) and "state_dict" not in saved:
        raise DataError(file, CHECKPOINT_HINT)
    if not isinstance(saved, dict):
        raise DataError(file, f"not a bintally model: it holds a {type(saved).__name__}, not a dict of {', '.join(MODEL_FIELDS)}")
    missing = [key for key in MODEL_FIELDS if key not in saved]
    if missing:
        raise DataError(file, f"not a bintally model: missing {', '.join(missing)}")
    for key, kind in MODEL_FIELDS.items():
        if not isinstance(saved[key], kind):
            raise DataError(file, f"not a bintally model: {key} is a {type(saved[key]).__name__}, expected a {kind.__name__}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in saved["state_dict"].items()):
        raise DataError(file, "not a bintally model: state_dict must map names to tensors")
    if not all(isinstance(c, str) for c in saved["classes"]):
        raise DataError(file, "not a bintally model: classes must be names such as '0' ... '5', '6+'")


def build_model(file: Path, saved: dict) -> tuple[CountingModel, TransformConfig]:
    """The model and transform best.pt describes, with its weights; DataError if they do not fit together."""
    try:
        config = ModelConfig(**(saved["model_config"] | {"pretrained": False, "weights": None}))
        transform = TransformConfig.from_dict(saved["transform"])
        space = config.labels
        model = CountingModel(config)
    except (TypeError, ValueError, KeyError, ConfigError) as e:
        raise DataError(file, f"model settings this version of bintally cannot use ({' '.join(str(e).split())})") from None
    if saved["classes"] != space.names:
        raise DataError(file, f"classes {saved['classes']} do not match the model's label space ({space.description})")
    problem = weights_problem(model.state_dict(), saved["state_dict"])
    if problem:
        raise DataError(file, f"weights do not fit the model it describes ({config.backbone}, {config.head} head, "
                              f"{space.n_classes} classes): {problem}")
    model.load_state_dict(saved["state_dict"])
    return model, transform
