"""`Counter`: a loaded model artifact plus a backend; photos in, one `Prediction` out."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from bintally.data.images import decode_image, photo_paths
from bintally.data.transforms import preprocess, preprocess_batch
from bintally.errors import ConfigError, DataError
from bintally.inference.prediction import Prediction
from bintally.inference.signature import ModelSignature
from bintally.inference.temperature import apply_temperature
from bintally.labels import LabelSpace
from bintally.models.artifact import ModelArtifact, read_artifact
from bintally.progress import progress_bar
from bintally.settings import Backend, check_choice


@dataclass
class Counter:
    artifact: ModelArtifact
    backend: object  # TorchBackend | OnnxBackend
    calibrated: bool = True  # apply the artifact's temperature (`bintally calibrate`); False: the network's own probabilities

    @classmethod
    def load(cls, path: str | Path, backend: Backend | str = Backend.TORCH, device: str = "cpu", threads: int | None = None,
             calibrated: bool = True) -> "Counter":
        """The model at `path` (a run, its model/ folder or an export) on the named backend.

        A PyTorch model runs on `onnx` after an export (cached by model version); an ONNX export
        runs only on `onnx`.
        """
        artifact = read_artifact(path)
        check_choice("backend", backend, tuple(Backend))
        if backend == Backend.TORCH:
            if artifact.runtime == Backend.ONNX:
                raise ConfigError(f"{artifact.path} is an ONNX export: use --backend onnx, or give the training run for --backend torch")
            from bintally.inference.backends import TorchBackend

            return cls(artifact, TorchBackend(artifact, device, threads), calibrated)
        from bintally.inference.backends import OnnxBackend

        model_file = None
        if artifact.runtime == Backend.TORCH:
            from bintally.inference.onnx import cached_onnx

            model_file = cached_onnx(artifact)
        return cls(artifact, OnnxBackend(artifact, threads, model_file), calibrated)

    @property
    def labels(self) -> LabelSpace:
        return self.artifact.labels

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.artifact.transform)

    @property
    def temperature(self) -> float:
        return self.artifact.temperature if self.calibrated else 1.0

    @cached_property
    def signature(self) -> ModelSignature:
        return ModelSignature.of(self.labels, self.artifact.transform.image_size)

    def network_probabilities(self, images: np.ndarray) -> np.ndarray:
        """The network's own probabilities [N, n_classes] of pre-processed photos [N, 3, H, W] (no temperature)."""
        size = self.artifact.transform.image_size
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(f"expected pre-processed photos of shape [N, 3, {size}, {size}], got {list(images.shape)}")
        if not len(images):
            return np.zeros((0, self.labels.n_classes), np.float32)
        return self.backend.probabilities(images)

    def prediction(self, raw: np.ndarray) -> Prediction:
        """The prediction of network probabilities (`network_probabilities`), at this counter's temperature and decoding."""
        return Prediction.of(self.labels, raw, self.artifact.decoding, self.temperature)

    def predict(self, images: np.ndarray) -> Prediction:
        """The prediction of pre-processed photos [N, 3, H, W]."""
        return self.prediction(self.network_probabilities(images))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Probabilities [N, n_classes] of pre-processed photos [N, 3, H, W], calibrated unless the counter is not (no decoding)."""
        return apply_temperature(self.network_probabilities(images), self.temperature)

    def count_images(self, images: list[Image.Image]) -> list[dict]:
        return self.predict(preprocess_batch(images, self.artifact.transform)).rows()

    def count_paths(self, paths: list[str | Path], batch_size: int = 32, progress: bool = True) -> tuple[list[dict], list[str]]:
        """(results, failures): a result per readable photo, in order, each with its "image"; "path: problem" per photo that is not.

        A folder stands for the photos under it (`photo_paths`)."""
        results, failures, names, batch = [], [], [], []

        def flush() -> None:
            results.extend({"image": name, **result} for name, result in zip(names, self.predict(np.stack(batch)).rows()))
            names.clear()
            batch.clear()

        for path in progress_bar(photo_paths(paths), desc="counting", unit="img", enabled=progress):
            if isinstance(path, DataError):
                failures.append(str(path))
                continue
            try:
                batch.append(self.preprocess(decode_image(path)))
                names.append(str(path))
            except DataError as e:
                failures.append(str(e))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        return results, failures

    def info(self) -> dict:
        """What a client may want to know about the model being served."""
        a = self.artifact
        return {"name": a.name, "version": a.version, "backend": self.backend_name, "runtime": a.runtime,
                "backbone": a.model.backbone, "head": a.model.head, "features": a.model.features, "members": a.model.members,
                "classes": a.labels.names, "decoding": a.decoding, "temperature": self.temperature,
                "tta": a.tta, "image_size": a.transform.image_size, "metrics": a.metrics}
