"""The model artifact: one versioned directory, written and read only here.

    model.json                          format and version, model config, pre-processing, label
                                        space, decoding, TTA, training config, validation metrics
    weights-<sha256[:12]>.safetensors   the weights (no pickle: loading a model runs none of its code)
    model.onnx                          instead of the safetensors file, in an ONNX export

Training writes RUN/model/; evaluate, predict, export and serve read it through `read_artifact`.
The weights file is named by its digest and written before model.json points at it, so a process
killed while saving leaves the previous model whole. Reading model.json needs no torch: a server
running the ONNX model never imports it.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from bintally.data.transforms import PREPROCESS_VERSION, TransformConfig
from bintally.errors import ConfigError, DataError
from bintally.io import atomic_path, given_path
from bintally.labels import DECODINGS, LabelSpace
from bintally.models.config import FEATURES, ModelConfig
from bintally.settings import Backend, check_range

FORMAT = "bintally-model"
FORMAT_VERSION = 1
META_FILE = "model.json"
RUN_SUBDIR = "model"  # where a training run keeps its model
DEFAULT_NAME = "bin-counter"
MODEL_HELP = "Run directory, its model/ folder, or an export folder."  # what --model takes, wherever a model is read
WEIGHTS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.(safetensors|onnx)$")  # a plain name inside the folder, never a path


@dataclass(frozen=True)
class ModelArtifact:
    path: Path  # the artifact directory
    weights: str  # file name inside it
    runtime: str  # torch: safetensors weights for CountingModel; onnx: an ONNX graph from photos to probabilities
    model: ModelConfig
    transform: TransformConfig
    tta: bool = True
    name: str = DEFAULT_NAME
    version: str = ""  # the weights' digest: two different models never share a version
    train_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # validation metrics when the model was saved
    export: dict = field(default_factory=dict)  # for an ONNX export: source, quantisation, parity check
    created: str = ""
    calibration: dict = field(default_factory=dict)  # temperature scaling fitted on validation photos (`bintally calibrate`)

    @property
    def temperature(self) -> float:
        """The probabilities' temperature (1.0: as the network gives them)."""
        return float(self.calibration.get("temperature", 1.0))

    @property
    def labels(self) -> LabelSpace:
        return self.model.labels

    @property
    def decoding(self) -> str:
        return self.model.decoding

    @property
    def weights_file(self) -> Path:
        return self.path / self.weights

    def to_json(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name, "version": self.version,
                "created": self.created, "runtime": self.runtime, "weights": self.weights,
                "model_config": asdict(self.model), "transform": self.transform.to_dict(), "preprocess_version": PREPROCESS_VERSION,
                "labels": {**self.labels.to_dict(), "names": self.labels.names}, "decoding": self.decoding, "tta": self.tta,
                "input": {"name": "images", "datatype": "FP32", "shape": [-1, 3, self.transform.image_size, self.transform.image_size]},
                "output": {"name": "probabilities", "datatype": "FP32", "shape": [-1, self.labels.n_classes]},
                "train_config": self.train_config, "metrics": self.metrics, "export": self.export,
                "calibration": self.calibration}

    def write_metadata(self) -> None:
        with atomic_path(self.path / META_FILE) as tmp:
            tmp.write_text(json.dumps(strict_json(self.to_json()), indent=2, default=str, allow_nan=False))


def strict_json(value):
    """NaN and infinities (e.g. the metrics of an empty subset) as null, so that every JSON parser reads model.json;
    NumPy numbers as JSON numbers (not as strings)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value) if math.isfinite(value) else None


# ---------------------------------------------------------------- finding and reading


def artifact_dir(path: str | Path) -> Path:
    """The artifact directory a user's path names: the directory, its model.json, a run directory, or a weights file in it."""
    path = given_path(path, "model path")
    if not path.exists():
        raise DataError(path, "no such model: pass a run directory, its model/ folder or an export folder")
    if path.is_file():
        if path.name == "last.pt" or path.parent.name == "checkpoints":
            raise DataError(path, "a training checkpoint, not a model: pass the run directory (its model/ folder holds the model)")
        if (path.parent / META_FILE).is_file():
            return path.parent
        raise DataError(path, f"not a bintally model: pass the folder holding {META_FILE} and the weights")
    for candidate in (path, path / RUN_SUBDIR):
        if (candidate / META_FILE).exists():
            return candidate
    raise DataError(path, f"no model here: expected {META_FILE} in this folder or in its {RUN_SUBDIR}/ folder "
                          f"(a training run writes it when it first validates)")


def read_artifact(path: str | Path) -> ModelArtifact:
    """The artifact at a user's path, every field checked; DataError naming model.json and the problem otherwise."""
    folder = artifact_dir(path)
    meta_path = folder / META_FILE
    meta = read_json(meta_path)
    problem = format_problem(meta)
    if problem:
        raise DataError(meta_path, problem)
    try:
        model = model_config(meta["model_config"])
        transform = TransformConfig.from_dict(meta["transform"])
    except (ConfigError, TypeError, ValueError) as e:
        raise DataError(meta_path, f"model settings this version of bintally cannot use ({' '.join(str(e).split())})") from None
    if meta.get("decoding") is not None and meta["decoding"] != model.decoding:
        raise DataError(meta_path, f"decoding {meta['decoding']!r} does not match the model's settings "
                                   f"(model_config decodes by {model.decoding!r})")
    names = (meta.get("labels") or {}).get("names")
    if names is not None and names != model.labels.names:
        raise DataError(meta_path, f"labels {names} do not match the model's label space ({model.labels.description})")
    weights = meta["weights"]
    if not isinstance(weights, str) or not WEIGHTS_NAME.match(weights):
        raise DataError(meta_path, f"weights must name a .safetensors or .onnx file in the same folder, got {weights!r}")
    if not (folder / weights).is_file():
        raise DataError(folder / weights, f"missing: {META_FILE} names it as the model's weights")
    return ModelArtifact(path=folder, weights=weights, runtime=meta["runtime"], model=model, transform=transform, tta=meta["tta"],
                         name=meta["name"], version=meta["version"], train_config=meta.get("train_config") or {},
                         metrics=meta.get("metrics") or {}, export=meta.get("export") or {}, created=meta.get("created", ""),
                         calibration=meta.get("calibration") or {})


def read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_bytes())
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(path, f"not a bintally model description: expected a JSON object, got {type(meta).__name__}")
    return meta


# model.json fields and their JSON types
REQUIRED = {"format": str, "format_version": int, "name": str, "version": str, "runtime": str, "weights": str,
            "model_config": dict, "transform": dict, "tta": bool}
OPTIONAL = {"created": str, "labels": dict, "decoding": str, "train_config": dict, "metrics": dict, "export": dict,
            "calibration": dict}


def type_problem(meta: dict, key: str, kind: type) -> str:
    if not isinstance(meta[key], kind) or (kind is int and isinstance(meta[key], bool)):
        return f"{key} is {json.dumps(meta[key])[:60]}, expected {kind.__name__}"
    return ""


def format_problem(meta: dict) -> str:
    if meta.get("format") != FORMAT:
        return f"not a bintally model description (format is {meta.get('format')!r}, expected {FORMAT!r})"
    version = meta.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        return f"written by a newer bintally (format version {version}; this one reads up to {FORMAT_VERSION}): upgrade bintally"
    for key, kind in REQUIRED.items():
        if key not in meta:
            return f"missing {key!r}"
        if type_problem(meta, key, kind):
            return type_problem(meta, key, kind)
    for key, kind in OPTIONAL.items():  # may be absent or null; otherwise of their type
        if meta.get(key) is not None and type_problem(meta, key, kind):
            return type_problem(meta, key, kind)
    if meta["runtime"] not in tuple(Backend):
        return f"unknown runtime {meta['runtime']!r}: use one of {', '.join(Backend)}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", meta["name"]):
        return f"name {meta['name']!r} must be 1-64 letters, digits, '.', '_' or '-'"
    if meta.get("decoding") is not None and meta["decoding"] not in DECODINGS:
        return f"unknown decoding {meta['decoding']!r}: use one of {', '.join(DECODINGS)}"
    temperature = (meta.get("calibration") or {}).get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0.05 <= temperature <= 20:
        return f"calibration temperature {json.dumps(temperature)[:40]} is not a number between 0.05 and 20"
    return ""


def model_config(values: dict) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown model settings {sorted(unknown)}")
    config = ModelConfig(**values)
    if config.decode not in ("auto", *DECODINGS):
        raise ConfigError(f"unknown decoding {config.decode!r}")
    if config.features not in FEATURES:
        raise ConfigError(f"unknown features {config.features!r}")
    check_range("members", config.members, 1, whole=True)
    if not isinstance(config.shared_backbone, bool):
        raise ConfigError(f"shared_backbone must be true or false, got {config.shared_backbone!r}")
    _ = config.labels  # min/max/overflow checked
    return replace(config, pretrained=False, weights=None)  # the artifact holds every weight


# ---------------------------------------------------------------- writing and loading weights (torch)


def save_model(out: str | Path, model, transform: TransformConfig, tta: bool, train_config: dict | None = None,
               metrics: dict | None = None, name: str = DEFAULT_NAME) -> ModelArtifact:
    """Write a CountingModel as an artifact (weights first, then model.json; old weights files removed last)."""
    from safetensors.torch import save

    out = Path(out)
    data = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, metadata={"format": FORMAT})
    digest = hashlib.sha256(data).hexdigest()
    weights = f"weights-{digest[:12]}.safetensors"
    with atomic_path(out / weights) as tmp:
        tmp.write_bytes(data)
    artifact = ModelArtifact(path=out, weights=weights, runtime=Backend.TORCH.value, model=replace(model.config), transform=transform, tta=tta,
                             name=name, version=digest[:12], train_config=train_config or {}, metrics=metrics or {},
                             created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    artifact.write_metadata()
    remove_unused_weights(out, keep=weights)
    return artifact


def remove_unused_weights(folder: Path, keep: str) -> None:
    for old in folder.glob("weights-*.safetensors"):
        if old.name != keep:
            old.unlink(missing_ok=True)


def load_weights(artifact: ModelArtifact) -> dict:
    """The weights as tensors, read without unpickling anything."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if artifact.runtime != Backend.TORCH:
        raise DataError(artifact.path, f"an {artifact.runtime} export: serve or predict it with --backend {artifact.runtime}")
    try:
        return load_file(str(artifact.weights_file), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(artifact.weights_file, f"truncated or damaged weights file ({' '.join(str(e).split())[:200]})") from None


def load_model(artifact: ModelArtifact):
    """The CountingModel (or CountingEnsemble) an artifact describes, with its weights, in eval mode."""
    from bintally.models.model import build_model, weights_problem

    try:
        model = build_model(artifact.model)
    except ConfigError as e:
        raise DataError(artifact.path / META_FILE, f"model settings this version of bintally cannot use ({e})") from None
    state = load_weights(artifact)
    problem = weights_problem(model.state_dict(), state)
    if problem:
        raise DataError(artifact.weights_file, f"weights do not fit the model {META_FILE} describes ({artifact.model.backbone}, "
                                               f"{artifact.model.head} head, {artifact.labels.n_classes} classes): {problem}")
    model.load_state_dict(state)
    return model.eval()
