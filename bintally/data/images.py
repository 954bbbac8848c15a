"""Decoding one photo and measuring what the manifest records about it."""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


@dataclass
class ImageFacts:
    bytes: int = 0
    sha256: str = ""
    width: int = 0
    height: int = 0
    phash: str = ""
    channel_mean: list[float] = field(default_factory=lambda: [float("nan")] * 3)
    channel_std: list[float] = field(default_factory=lambda: [float("nan")] * 3)
    problem: str = ""  # empty when the image decoded cleanly

    def as_dict(self) -> dict:
        return asdict(self)


def open_rgb(data: bytes) -> Image.Image:
    """Fully decode an image (a truncated file fails here, not later) as RGB."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.convert("RGB")


def probe_image(path: str | Path) -> ImageFacts:
    """Hash, decode and summarise one photo; never raises for a bad file, records why instead."""
    facts = ImageFacts()
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        facts.problem = f"unreadable: {e.strerror or e}"
        return facts
    facts.bytes = len(data)
    facts.sha256 = hashlib.sha256(data).hexdigest()
    if not data:
        facts.problem = "empty file"
        return facts
    try:
        img = open_rgb(data)
    except UnidentifiedImageError:
        facts.problem = "not an image"
        return facts
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        facts.problem = f"corrupt image ({e})"
        return facts
    facts.width, facts.height = img.size
    facts.phash = str(imagehash.phash(img))
    pixels = np.asarray(img, dtype=np.float32).reshape(-1, 3) / 255.0
    facts.channel_mean = pixels.mean(axis=0).round(5).tolist()
    facts.channel_std = pixels.std(axis=0).round(5).tolist()
    return facts
