"""Decoding one photo and measuring what the manifest records about it."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

from bintally.errors import DataError
from bintally.text import whole_number

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


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


# one pixel limit for every command (index, train, evaluate, predict, serve): a decompression bomb is refused
DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "BINTALLY_MAX_PIXELS"
# JPEGs larger than this on a side are decoded at a reduced scale (DCT scaling, PIL's draft mode), never in full
DRAFT_SIZE = 2048
Image.MAX_IMAGE_PIXELS = None  # the limit below replaces PIL's warning, which names no file


def max_pixels() -> int:
    value = os.environ.get(MAX_PIXELS_ENV, "")
    number = whole_number(value)
    return number if number is not None and number > 0 else DEFAULT_MAX_PIXELS


def set_max_pixels(limit: int) -> None:
    """Set the pixel limit for this process and the worker processes it starts."""
    if limit < 1:
        raise ValueError("the pixel limit must be at least 1")
    os.environ[MAX_PIXELS_ENV] = str(int(limit))


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with 16-bit greyscale scaled to 8 bits (PIL's own conversion would clip it to white)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
    return img.convert("RGB")


def decode_image(source: str | Path | bytes, name: str | Path | None = None) -> Image.Image:
    """The one image decoder: a path or bytes to a fully decoded RGB image, within the pixel limit.

    Raises DataError naming the file (or `name`) and the problem: missing, not an image, truncated,
    too many pixels.
    """
    name = name or ("<image bytes>" if isinstance(source, bytes) else source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            width, height = img.size
            if img.format == "JPEG" and max(width, height) > DRAFT_SIZE:
                img.draft("RGB", (DRAFT_SIZE, DRAFT_SIZE))
            limit = max_pixels()
            if img.size[0] * img.size[1] > limit:
                raise DataError(name, f"image too large: {width}x{height} pixels, over the limit of {limit:,} "
                                      f"(raise it with --max-pixels or {MAX_PIXELS_ENV})")
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise DataError(name, "no such image") from None
    except IsADirectoryError:
        raise DataError(name, "is a folder, not an image") from None
    except PermissionError:
        raise DataError(name, "cannot read the image (permission denied)") from None
    except UnidentifiedImageError:
        raise DataError(name, "not an image (or a format PIL cannot read)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(name, f"corrupt image ({e})") from None


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
        img = decode_image(data, name=path)
        with Image.open(io.BytesIO(data)) as header:
            facts.width, facts.height = header.size  # the photo's own size, even when decoded at reduced scale
    except DataError as e:
        facts.problem = e.problem
        return facts
    facts.phash = str(imagehash.phash(img))
    pixels = np.asarray(img, dtype=np.float32).reshape(-1, 3) / 255.0
    facts.channel_mean = pixels.mean(axis=0).round(5).tolist()
    facts.channel_std = pixels.std(axis=0).round(5).tolist()
    return facts
