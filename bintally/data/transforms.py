"""The one image pre-processing, shared by training, evaluation, prediction, export and serving (no train/serve skew).

Evaluation pre-processing (`preprocess`) needs only PIL and NumPy, so that a server running an ONNX
model never imports torch. Training augmentations run on the same PIL image before the same
normalisation, and never change how many items are visible: flips on both axes, a small rotation,
a zoom out (the whole photo stays in view, down to 85% of its size), colour jitter and a mild blur.
Crops and cut-outs, which can remove an item, are not used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import Image

from bintally.errors import ConfigError
from bintally.settings import check_range

# changes whenever `preprocess` computes something different (frozen-feature caches are keyed by it)
PREPROCESS_VERSION = 2


@dataclass(frozen=True)
class TransformConfig:
    image_size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    min_scale: float = 0.85
    jitter: float = 0.2

    def __post_init__(self):
        check_range("image_size", self.image_size, 16, 4096, whole=True)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
                raise ConfigError(f"{name} must be three numbers (R, G, B), got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if not all(s > 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std!r}")

    @classmethod
    def from_dict(cls, values: dict) -> "TransformConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known if isinstance(values, dict) else set()
        if not isinstance(values, dict) or unknown:
            raise ConfigError(f"not a transform: {values!r}" + (f" (unknown {', '.join(sorted(unknown))})" if unknown else ""))
        return cls(**values)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def normalize(image: Image.Image, config: TransformConfig) -> np.ndarray:
    """An RGB image of the model's size as float32 [3, H, W], scaled to 0..1 and normalised."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(config.mean, np.float32)) / np.asarray(config.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def preprocess(image: Image.Image, config: TransformConfig) -> np.ndarray:
    """Evaluation pre-processing of one decoded RGB photo: resized (bilinear, antialiased) and normalised."""
    size = (config.image_size, config.image_size)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return normalize(image, config)


def preprocess_batch(images: list[Image.Image], config: TransformConfig) -> np.ndarray:
    return np.stack([preprocess(image, config) for image in images]) if images else np.zeros((0, 3, config.image_size, config.image_size), np.float32)


class PhotoTransform:
    """PIL image -> float tensor [3, H, W]: `preprocess` for evaluation; augmentation, then the same normalisation, for training."""

    def __init__(self, config: TransformConfig, train: bool):
        self.config, self.augment = config, None
        if train:
            from torchvision.transforms import v2

            size = (config.image_size, config.image_size)
            grey = tuple(round(255 * m) for m in config.mean)  # padding normalises to 0
            self.augment = v2.Compose([
                v2.Resize(size, antialias=True),
                v2.RandomAffine(degrees=10, scale=(config.min_scale, 1.0), fill=grey),
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                v2.ColorJitter(config.jitter, config.jitter, config.jitter, 0.02),
                v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.2),
            ])

    def __call__(self, image: Image.Image):
        import torch

        array = preprocess(image, self.config) if self.augment is None else normalize(self.augment(image), self.config)
        return torch.from_numpy(array)


def build_transform(config: TransformConfig, train: bool) -> PhotoTransform:
    return PhotoTransform(config, train)
