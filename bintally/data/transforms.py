"""The one image transform shared by training, evaluation and serving (no train/serve skew).

Augmentations never change how many items are visible: horizontal flip, a mild scale/crop that
keeps at least 85% of the photo, and colour jitter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2


@dataclass(frozen=True)
class TransformConfig:
    image_size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    min_scale: float = 0.85
    jitter: float = 0.2


def build_transform(config: TransformConfig, train: bool) -> v2.Compose:
    size = (config.image_size, config.image_size)
    resize = (
        [v2.RandomResizedCrop(size, scale=(config.min_scale, 1.0), ratio=(0.9, 1.1), antialias=True),
         v2.RandomHorizontalFlip(),
         v2.ColorJitter(config.jitter, config.jitter, config.jitter, 0.02)]
        if train
        else [v2.Resize(size, antialias=True)]
    )
    return v2.Compose([
        v2.ToImage(),
        *resize,
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(config.mean, config.std),
    ])
