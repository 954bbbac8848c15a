"""Where an audit's bin snapshots come from: a bucket-layout folder or a CSV of bin_id,image,record_qty[,captured_at].

In a bucket folder (bin-images/ + metadata/, as ABID and `bintally data fetch` lay it out) the record is each
photo's EXPECTED_QUANTITY and the bin id is the photo's name. In a CSV, `image` is a path (relative to the
CSV) or an s3://, https:// or file:// URI fetched under the same allowlist rules as the server (bintally.sources). Every row is
checked before any photo is read: one bad row refuses the whole source, in one line naming file and line.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from bintally.data.images import IMAGE_SUFFIXES
from bintally.data.records import SkuLine
from bintally.errors import DataError
from bintally.io import given_path
from bintally.sources import SourceError, SourcePolicy, UriFetcher

REQUIRED_COLUMNS = ("bin_id", "image", "record_qty")
URI_SCHEMES = ("s3://", "https://", "http://", "file://")
MAX_RECORD = 10**6
UPLOAD_SCHEME = "upload:"  # a photo uploaded over HTTP, kept in the store's photos table by its sha256


@dataclass(frozen=True)
class SnapshotIn:
    """One bin snapshot to audit: the photo (a path or URI) and the quantity the record held."""

    bin_id: str
    image: str
    record_qty: int  # the sum of the lines' quantities when the record has lines
    captured_at: datetime | None = None
    lines: tuple[SkuLine, ...] = ()  # the record's SKU lines; () for a source with totals only

    def key(self, sha256: str) -> str:
        """The snapshot's identity: the same bin, photo bytes, record and time are the same snapshot on every re-run."""
        stamp = self.captured_at.isoformat() if self.captured_at else ""
        return hashlib.sha256(f"{self.bin_id}\x1f{sha256}\x1f{self.record_qty}\x1f{stamp}".encode()).hexdigest()


def is_uri(image: str) -> bool:
    return image.lower().startswith(URI_SCHEMES) or image.startswith(UPLOAD_SCHEME)


def read_source(src: str | Path) -> list[SnapshotIn]:
    """The snapshots of a bucket-layout folder or a CSV, sorted by bin id and image (every shard sees the same order)."""
    src = given_path(src, "audit source")
    if not src.exists():
        raise DataError(src, "no such file or folder: give a bucket-layout folder (bin-images/, metadata/) or a CSV "
                             "of bin_id,image,record_qty[,captured_at]")
    snapshots = bucket_snapshots(src) if src.is_dir() else csv_snapshots(src)
    if not snapshots:
        raise DataError(src, "no bin snapshots to audit")
    return sorted(snapshots, key=lambda s: (s.bin_id, s.image))


def bucket_snapshots(src: Path) -> list[SnapshotIn]:
    from bintally.data.metadata import read_metadata

    photos_dir, meta_dir = src / "bin-images", src / "metadata"
    if not photos_dir.is_dir():
        raise DataError(src, "not a bucket-layout folder: expected bin-images/ (photos) and metadata/ (their JSON records)")
    snapshots = []
    for photo in sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        meta = meta_dir / f"{photo.stem}.json"
        if not meta.is_file():
            raise DataError(meta, f"missing: the record (EXPECTED_QUANTITY) of {photo.name}")
        record = read_metadata(meta).count
        snapshots.append(SnapshotIn(photo.stem, str(photo.resolve()), check_record(record, str(meta))))
    return snapshots


def check_record(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(where, f"record quantity {value!r} is not a whole number")
    if value < 0:
        raise DataError(where, f"record quantity {value} is below 0")
    if value > MAX_RECORD:
        raise DataError(where, f"record quantity {value} is implausibly large (over {MAX_RECORD:,})")
    return value


def parse_record(text: str, where: str) -> int:
    text = (text or "").strip()
    try:
        value = int(text)
    except ValueError:
        raise DataError(where, f"record_qty {text!r} is not a whole number") from None
    return check_record(value, where)


def parse_time(text: str, where: str) -> datetime | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(where, f"captured_at {text!r} is not an ISO 8601 time such as 2026-11-25T14:03:00Z") from None
    return stamp.astimezone(timezone.utc).replace(tzinfo=None) if stamp.tzinfo else stamp


def csv_snapshots(src: Path, text: str | None = None, base: Path | None = None,
                  uploads: dict[str, str] | None = None) -> list[SnapshotIn]:
    """Rows of a bin_id,image,record_qty[,captured_at] CSV (from `src`, or `text` named `src`); paths relative to `base`.

    With `uploads` (file name -> sha256 of the photos uploaded with it, as the server gets them) an image is one of
    those names or a URI, never a path: the server reads no file it was not sent or allowed."""
    base = base or src.parent
    if text is None:
        try:
            text = src.read_bytes().decode("utf-8-sig")
        except OSError as e:
            raise DataError(src, f"cannot read ({e.strerror or e})") from None
        except UnicodeDecodeError:
            raise DataError(src, "not a UTF-8 text CSV") from None
    try:
        reader = csv.DictReader(text.splitlines())
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DataError(src, f"CSV needs columns bin_id,image,record_qty[,captured_at]; missing {','.join(missing)} "
                                 f"(found {','.join(columns) or 'no header'})")
        reader.fieldnames = columns
        rows = list(enumerate(reader, start=2))
    except csv.Error as e:
        raise DataError(src, f"not a readable CSV ({e})") from None
    return [csv_row(src, line, row, base, uploads) for line, row in rows if any((v or "").strip() for v in row.values())]


def csv_row(src: Path, line: int, row: dict, base: Path, uploads: dict[str, str] | None) -> SnapshotIn:
    where = f"{src}:{line}"
    if None in row:
        raise DataError(where, "more fields than the header has columns")
    bin_id, image = (row.get("bin_id") or "").strip(), (row.get("image") or "").strip()
    if not bin_id:
        raise DataError(where, "empty bin_id")
    if len(bin_id) > 200:
        raise DataError(where, "bin_id is longer than 200 characters")
    if not image:
        raise DataError(where, "empty image")
    if not is_uri(image):
        if "://" in image:
            raise DataError(where, f"image {image!r}: unsupported URI scheme; use a path, s3://, https:// or file://")
        image = uploaded(image, uploads, where) if uploads is not None else str((base / image).resolve())
    return SnapshotIn(bin_id, image, parse_record(row.get("record_qty"), where), parse_time(row.get("captured_at"), where))


def upload_name(filename: str | None) -> str:
    """The name an uploaded photo is known by in the CSV: its file name without any folder the client sent."""
    return PurePosixPath((filename or "").replace("\\", "/")).name


def uploaded(image: str, uploads: dict[str, str], where: str) -> str:
    """upload:<sha256> of the uploaded photo a CSV's image names (by file name); DataError if none was sent."""
    digest = uploads.get(image) or uploads.get(upload_name(image))
    if digest is None:
        have = ", ".join(sorted(uploads)[:5]) + (", ..." if len(uploads) > 5 else "") if uploads else "no photos were uploaded"
        raise DataError(where, f"image {image!r} is not one of the uploaded photos ({have}) nor an s3://, https:// or file:// URI")
    return UPLOAD_SCHEME + digest


class PhotoReader:
    """The bytes of a snapshot's photo: a local path as given; URIs only under the allowlists, as the server fetches them."""

    def __init__(self, policy: SourcePolicy, uploads: dict | None = None):
        self.policy = policy
        self.uploads = uploads or {}

    def read_many(self, images: list[str]) -> list[bytes | DataError]:
        """Each photo's bytes, or the DataError saying why it cannot be had (missing, refused by the allowlist, too large).
        URIs are fetched concurrently on one event loop with one client per batch."""
        results: list[bytes | DataError] = [self.read_local(image) if not is_uri(image) or image.startswith(UPLOAD_SCHEME)
                                            else DataError(image, "pending") for image in images]
        remote = [i for i, image in enumerate(images) if is_uri(image) and not image.startswith(UPLOAD_SCHEME)]
        if remote:
            for i, fetched in zip(remote, asyncio.run(self.fetch_all([images[i] for i in remote]))):
                results[i] = fetched
        return results

    def read_local(self, image: str) -> bytes | DataError:
        if image.startswith(UPLOAD_SCHEME):
            data = self.uploads.get(image[len(UPLOAD_SCHEME):])
            return data if data is not None else DataError(image, "no uploaded photo with this digest")
        try:
            size = Path(image).stat().st_size
            if size > self.policy.max_bytes:
                return DataError(image, f"larger than the limit of {self.policy.max_bytes:,} bytes")
            return Path(image).read_bytes()
        except OSError as e:
            return DataError(image, f"cannot read ({e.strerror or e})")

    async def fetch_all(self, uris: list[str]) -> list[bytes | DataError]:
        fetcher = UriFetcher(self.policy)

        async def fetch(uri: str) -> bytes | DataError:
            try:
                return await fetcher.fetch(uri)
            except SourceError as e:
                return DataError(uri, e.message.removeprefix(f"{uri}: "))

        try:
            return await asyncio.gather(*(fetch(uri) for uri in uris))
        finally:
            await fetcher.aclose()
