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
from bintally.io import read_regular
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


# one byte limit for every photo read from a file (index, train, evaluate, predict, audit, the server's file:// and
# uploads): enforced while reading, so that /dev/zero or a file growing under the reader is never read past it.
# 50 MB holds any JPEG within the pixel limit; an uncompressed BMP of 50 megapixels needs it raised.
DEFAULT_MAX_IMAGE_BYTES = 50_000_000
MAX_IMAGE_BYTES_ENV = "BINTALLY_MAX_IMAGE_BYTES"


def max_image_bytes() -> int:
    number = whole_number(os.environ.get(MAX_IMAGE_BYTES_ENV, ""))
    return number if number is not None and number > 0 else DEFAULT_MAX_IMAGE_BYTES


def read_photo(path: str | Path, follow_symlinks: bool = True, limit: int | None = None) -> bytes:
    """The bytes of the photo file `path`: a regular file within the photo byte limit (or `limit`, when smaller); else
    DataError naming the file: no such image, a folder, a FIFO, a device, a socket, a symbolic link loop, too large."""
    limit = max_image_bytes() if limit is None else min(limit, max_image_bytes())
    return read_regular(path, limit, "image", follow_symlinks, hint=f" (raise it with {MAX_IMAGE_BYTES_ENV})")


def photo_paths(paths: list[str | Path]) -> list[str | Path | DataError]:
    """The photos to read for `paths`, in order: a file as given, a folder as the photos under it (`photos_under`), or
    a DataError for a folder that holds none or cannot be listed."""
    found: list[str | Path | DataError] = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(path)
            continue
        photos, problems = photos_under(Path(path))
        found += photos + problems
        if not photos and not problems:
            found.append(DataError(path, f"is a folder with no photos ({', '.join(sorted(IMAGE_SUFFIXES))}) in it"))
    return found


def photos_under(folder: Path) -> tuple[list[Path], list[DataError]]:
    """The files under `folder` named as photos, sorted, and why a folder could not be listed. Hidden files and folders
    are left out and linked folders not entered; a FIFO, device or socket named as a photo is listed (its reader refuses
    it by its status, unopened, in one line)."""
    photos, problems = [], []

    def unlisted(e: OSError) -> None:
        problems.append(DataError(e.filename, f"cannot list the folder ({e.strerror or e})"))

    for root, folders, files in os.walk(folder, onerror=unlisted):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        photos += [Path(root, name) for name in sorted(files)
                   if Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")]
    return photos, problems


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

    Raises DataError naming the file (or `name`) and the problem: missing, not a regular file (`read_photo`), over the
    byte limit, not an image, truncated, too many pixels.
    """
    name = name or ("<image bytes>" if isinstance(source, bytes) else source)
    data = source if isinstance(source, bytes) else read_photo(source)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if img.format == "JPEG" and max(width, height) > DRAFT_SIZE:
                img.draft("RGB", (DRAFT_SIZE, DRAFT_SIZE))
            limit = max_pixels()
            if img.size[0] * img.size[1] > limit:
                raise DataError(name, f"image too large: {width}x{height} pixels, over the limit of {limit:,} "
                                      f"(raise it with --max-pixels or {MAX_PIXELS_ENV})")
            img.load()
            return to_rgb(img)
    except UnidentifiedImageError:
        raise DataError(name, "not an image (or a format PIL cannot read)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(name, f"corrupt image ({e})") from None


def probe_image(path: str | Path) -> ImageFacts:
    """Hash, decode and summarise one photo; never raises for a bad file, records why instead."""
    facts = ImageFacts()
    try:
        data = read_photo(path)
    except DataError as e:
        facts.problem = f"unreadable: {e.problem}"
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
