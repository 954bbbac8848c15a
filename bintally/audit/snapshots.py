"""Where an audit's bin snapshots come from: a bucket-layout folder, a CSV, or a JSON records document.

In a bucket folder (bin-images/ + metadata/, as ABID and `bintally data fetch` lay it out) the record is each
photo's EXPECTED_QUANTITY with its SKU lines (BIN_FCSKU_DATA), and the bin id is the photo's name. A CSV holds
either totals (bin_id,image,record_qty[,captured_at]) or SKU lines (bin_id,image,sku,qty[,length,width,height,unit,
weight,weight_unit][,captured_at], one row per line), told apart by its header. A JSON document (a file, or the
`records` part of POST /v1/audit-runs) lists {"bins": [{"bin_id", "image", "record_qty"?, "lines"?: [...]}]}.
`image` is a path (relative to the source) or an s3://, https:// or file:// URI fetched under the same allowlist rules as
the server (bintally.sources). Every row is checked before any photo is read: one bad row refuses the whole source,
in one line naming file and line (or bin).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from bintally.data.images import IMAGE_SUFFIXES, max_image_bytes, read_photo
from bintally.data.records import LENGTH_UNITS, MAX_LINES, MAX_TEXT, WEIGHT_UNITS, SkuLine, measure, record_text, whole_quantity
from bintally.errors import DataError
from bintally.io import MAX_SOURCE_BYTES, given_path, read_regular
from bintally.sources import SourceError, SourcePolicy, UriFetcher
from bintally.text import whole_number

REQUIRED_COLUMNS = ("bin_id", "image", "record_qty")
LINE_COLUMNS = ("bin_id", "image", "sku", "qty")
LINE_OPTIONAL = ("length", "width", "height", "unit", "weight", "weight_unit", "captured_at")
LINE_HEADER = "bin_id,image,sku,qty[,length,width,height,unit,weight,weight_unit][,captured_at]"
SIZES = ("length", "width", "height")
BIN_KEYS = ("bin_id", "image", "captured_at", "record_qty", "lines")  # a bin of a JSON records document
LINE_KEYS = ("sku", "qty", "length", "width", "height", "unit", "weight", "weight_unit")  # one of its lines
MAX_BINS = 100_000  # bins in one JSON records document
URI_SCHEMES = ("s3://", "https://", "http://", "file://")
MAX_RECORD = 10**6
DECIMAL = re.compile(r"[+-]?[0-9]+\.[0-9]*")  # "3.0" as a spreadsheet writes 3 (ASCII digits only, as whole_number)
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
        """The snapshot's identity: the same bin, photo (URI and bytes; "" when unreadable), record (with its lines) and
        time are the same snapshot on every re-run; two photos of a bin, two unreadable ones included, never are."""
        stamp = self.captured_at.isoformat() if self.captured_at else ""
        identity = f"{self.bin_id}\x1f{sha256}\x1f{self.record_qty}\x1f{stamp}"
        if self.lines:
            identity += f"\x1f{self.lines_key()}"
        return hashlib.sha256(f"{identity}\x1f{self.image}".encode()).hexdigest()

    def lines_key(self) -> str:
        """The lines as text that is the same for the same lines in any order ("" without lines); sizes to 1e-4 in and lb."""
        rows = sorted(json.dumps([line.sku, line.qty, *(None if v is None else round(v, 4) for v in
                                  (line.length_in, line.width_in, line.height_in, line.weight_lb))]) for line in self.lines)
        return "\x1e".join(rows)


def is_uri(image: str) -> bool:
    return image.lower().startswith(URI_SCHEMES) or image.startswith(UPLOAD_SCHEME)


def read_source(src: str | Path, lines: str = "use") -> list[SnapshotIn]:
    """The snapshots of a bucket-layout folder, a CSV or a JSON records file, sorted by bin id and image (every shard
    sees the same order); with lines="ignore" the record's totals only."""
    src = given_path(src, "audit source")
    if not src.exists() and not src.is_symlink():  # a link loop or a broken link: its reader says which
        raise DataError(src, "no such file or folder: give a bucket-layout folder (bin-images/, metadata/), a CSV "
                             f"of bin_id,image,record_qty[,captured_at] or of {LINE_HEADER}, or a JSON records file")
    if src.is_dir():
        snapshots = bucket_snapshots(src, lines)
    elif src.suffix.lower() == ".json":
        from bintally.data.metadata import load_json

        snapshots = json_snapshots(load_json(src, "records document"), str(src), None, src.parent)
    else:
        snapshots = csv_snapshots(src)
    if not snapshots:
        raise DataError(src, "no bin snapshots to audit")
    if lines == "ignore":
        snapshots = totals_only(snapshots)
    return sorted(snapshots, key=lambda s: (s.bin_id, s.image))


def totals_only(snapshots: list[SnapshotIn]) -> list[SnapshotIn]:
    """The snapshots without their SKU lines (each keeps its record total)."""
    return [replace(s, lines=()) for s in snapshots]


# ---------------------------------------------------------------- a bucket-layout folder


def bucket_snapshots(src: Path, lines: str = "use") -> list[SnapshotIn]:
    """One snapshot per photo; its record from metadata/<id>.json (with lines="use" its SKU lines too, which must sum
    to EXPECTED_QUANTITY)."""
    photos_dir, meta_dir = src / "bin-images", src / "metadata"
    if not photos_dir.is_dir():
        raise DataError(src, "not a bucket-layout folder: expected bin-images/ (photos) and metadata/ (their JSON records)")
    snapshots, disagreeing = [], []
    for photo in sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        record_text(photo.stem, ascii(str(photo)), "bin id (the photo's name)")
        meta = meta_dir / f"{photo.stem}.json"
        if not meta.exists():
            raise DataError(meta, f"missing: the record (EXPECTED_QUANTITY) of {photo.name}")
        expected, record_lines = bucket_record(meta, lines)
        total = sum(line.qty for line in record_lines)
        if record_lines and total != expected:
            disagreeing.append((meta, total, expected))
        snapshots.append((SnapshotIn(photo.stem, local_path(photo), check_record(expected, str(meta)), lines=record_lines), str(photo)))
    if disagreeing:
        raise lines_disagree(disagreeing)
    return once_each(snapshots)


def bucket_record(meta: Path, lines: str) -> tuple[int, tuple[SkuLine, ...]]:
    """(EXPECTED_QUANTITY, SKU lines) of a metadata file; no lines when they are ignored."""
    from bintally.data.metadata import read_metadata
    from bintally.data.records import metadata_lines, metadata_record

    if lines == "ignore":
        return read_metadata(meta).count, ()
    expected, doc = metadata_record(meta)
    try:
        return expected, metadata_lines(doc, str(meta))
    except DataError as e:
        raise DataError(e.path, f"{e.problem}; to audit the totals only, give --lines ignore") from None


def lines_disagree(disagreeing: list[tuple[Path, int, int]]) -> DataError:
    """The refusal of a bucket whose records' SKU lines do not sum to their EXPECTED_QUANTITY: the first, and how many more."""
    meta, total, expected = disagreeing[0]
    others = [m.name for m, _, _ in disagreeing[1:]]
    more = (f"; {len(others)} more metadata file(s) disagree likewise ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''})"
            if others else "")
    return DataError(meta, f"the record's SKU lines (BIN_FCSKU_DATA) sum to {total} item(s) but EXPECTED_QUANTITY is "
                           f"{expected}{more}: correct the record or move the bin out of the folder, or audit the totals "
                           f"only with --lines ignore")


# ---------------------------------------------------------------- fields every source shares


def check_record(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(where, f"record quantity {value!r} is not a whole number")
    if value < 0:
        raise DataError(where, f"record quantity {value} is below 0")
    if value > MAX_RECORD:
        raise DataError(where, f"record quantity {value} is implausibly large (over {MAX_RECORD:,})")
    return value


def parse_record(text: str, where: str) -> int:
    value = whole_number(text or "")
    if value is None:
        raise DataError(where, f"record_qty {(text or '').strip()!r} is not a whole number (digits 0-9)")
    return check_record(value, where)


def once_each(read: list[tuple[SnapshotIn, str]]) -> list[SnapshotIn]:
    """The snapshots of one source, each (snapshot, where it was read); a bin given twice at the same time (captured_at,
    or none) is refused naming both places, whether the two agree or not: two records of one bin cannot both be
    right, and the same record twice would make two tasks for one bin."""
    first: dict[tuple, tuple[SnapshotIn, str]] = {}
    for snapshot, where in read:
        earlier = first.setdefault((snapshot.bin_id, snapshot.captured_at), (snapshot, where))
        if earlier[0] is not snapshot:
            raise DataError(where, f"bin {snapshot.bin_id!r} is also at {earlier[1]}{difference(earlier[0], snapshot)}: give each "
                                   "bin snapshot once (a bin photographed again needs its own captured_at)")
    return [snapshot for snapshot, _ in read]


def difference(earlier: SnapshotIn, later: SnapshotIn) -> str:
    """How a bin's second record differs from its first, in words (' with the same record' when it does not)."""
    if earlier.image != later.image:
        return " with another image"
    if earlier.record_qty != later.record_qty:
        return f" with record_qty {earlier.record_qty} there and {later.record_qty} here"
    if earlier.lines_key() != later.lines_key():
        return " with other SKU lines"
    return " with the same record"


def parse_time(text: str, where: str) -> datetime | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(where, f"captured_at {text!r} is not an ISO 8601 time such as 2026-11-25T14:03:00Z") from None
    return stamp.astimezone(timezone.utc).replace(tzinfo=None) if stamp.tzinfo else stamp


def bin_and_image(bin_id: str, image: str, where: str, base: Path, uploads: dict[str, str] | None) -> tuple[str, str]:
    """The bin id and the photo (a resolved path, a URI, or upload:<sha256>), checked."""
    bin_id = record_text(bin_id, where, "bin_id").strip()
    image = record_text(image, where, "image", limit=None, identifier=False).strip()
    if not bin_id:
        raise DataError(where, "empty bin_id")
    if not image:
        raise DataError(where, "empty image")
    if not is_uri(image):
        if "://" in image:
            raise DataError(where, f"image {image!r}: unsupported URI scheme; use a path, s3://, https:// or file://")
        image = uploaded(image, uploads, where) if uploads is not None else local_path(base / image)
    return bin_id, image


def local_path(path: Path) -> str:
    """A photo's path with links resolved; a symbolic link loop as given (its reader then says what it is)."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError, ValueError):  # a loop (RuntimeError before Python 3.13), a NUL byte
        return os.path.abspath(path)


def line_qty(value, where: str) -> int:
    """A SKU line's quantity: a whole number of items from 0 (CSV text or a JSON number)."""
    number = value
    if isinstance(value, str):
        number = float(value) if DECIMAL.fullmatch(value.strip()) else whole_number(value)
        if number is None:
            raise DataError(where, f"qty {value!r} is not a whole number (digits 0-9)")
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise DataError(where, f"qty {value!r} is not a whole number")
    if number < 0:
        raise DataError(where, f"qty {value} is below 0: a line holds 0 or more items")
    if number != int(number):
        raise DataError(where, f"qty {value} is fractional: a line holds a whole number of items")
    return whole_quantity(int(number), where, "qty")


def unit_of(value, units: dict[str, float], default: str, where: str, what: str) -> str:
    """A unit name of `units` (`default` when none is given); DataError for any other."""
    if value is not None and not isinstance(value, str):
        raise DataError(where, f"{what} {value!r} is not a unit name; use one of {', '.join(units)}")
    name = (value or "").strip().lower() or default
    if name not in units:
        raise DataError(where, f"unknown {what} {value!r}; use one of {', '.join(units)}")
    return name


def sku_line(fields: dict, sku: str, where: str) -> SkuLine:
    """A line from its fields (a CSV row or a JSON object): qty, length/width/height in `unit` (default in), weight in
    `weight_unit` (default lb); converted to inches and pounds."""
    length_unit = unit_of(fields.get("unit"), LENGTH_UNITS, "in", where, "unit")
    weight_unit = unit_of(fields.get("weight_unit"), WEIGHT_UNITS, "lb", where, "weight_unit")
    for name in (*SIZES, "weight"):
        if isinstance(fields.get(name), (bool, dict, list)):
            raise DataError(where, f"{name} {fields[name]!r} is not a number")
    size = [measure(fields.get(name), length_unit, LENGTH_UNITS, where, name) for name in SIZES]
    if None in size and any(v is not None for v in size):
        raise DataError(where, f"SKU {sku!r}: give length, width and height together, or none of them")
    weight = measure(fields.get("weight"), weight_unit, WEIGHT_UNITS, where, "weight")
    return SkuLine(sku, line_qty(fields.get("qty"), where), *size, weight)


def same_item(a: SkuLine, b: SkuLine) -> bool:
    """The same dimensions and weight (both absent, or equal to a millionth)."""
    pairs = zip((a.length_in, a.width_in, a.height_in, a.weight_lb), (b.length_in, b.width_in, b.height_in, b.weight_lb))
    return all(x is None and y is None or x is not None and y is not None and math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)
               for x, y in pairs)


@dataclass
class BinRecord:
    """The SKU lines of one bin snapshot as they are read: the same SKU twice with the same sizes is summed, with
    other sizes refused; at most MAX_LINES lines. `where` says where each line was read (file:line, or bins[i])."""

    bin_id: str
    image: str
    captured_at: datetime | None
    where: str
    lines: dict[str, tuple[SkuLine, str]] = field(default_factory=dict)  # sku -> (line, where it was first given)
    nothing_at: str | None = None  # where a row said the record lists nothing for this bin

    def add(self, line: SkuLine, where: str) -> None:
        if self.nothing_at:
            raise DataError(where, f"bin {self.bin_id!r}: a SKU line beside the row with an empty sku at {self.nothing_at}, "
                                   "which says the record lists nothing for this bin")
        known = self.lines.get(line.sku)
        if known is None:
            if len(self.lines) >= MAX_LINES:
                raise DataError(where, f"bin {self.bin_id!r}: more than {MAX_LINES:,} SKU lines, the limit per bin")
            self.lines[line.sku] = (line, where)
            return
        first, at = known
        if not same_item(first, line):
            raise DataError(where, f"SKU {line.sku!r} of bin {self.bin_id!r} is also at {at} with other dimensions or "
                                   "weight: give one SKU one size and weight")
        self.lines[line.sku] = (replace(first, qty=first.qty + line.qty), at)

    def add_nothing(self, where: str) -> None:
        if self.lines:
            first = next(iter(self.lines.values()))[1]
            raise DataError(where, f"bin {self.bin_id!r}: a row with an empty sku (the record lists nothing) beside its "
                                   f"SKU lines (the first at {first})")
        self.nothing_at = where

    def snapshot(self) -> SnapshotIn:
        lines = tuple(line for line, _ in self.lines.values())
        return SnapshotIn(self.bin_id, self.image, check_record(sum(line.qty for line in lines), self.where),
                          self.captured_at, lines)


# ---------------------------------------------------------------- CSV


def csv_snapshots(src: Path, text: str | None = None, base: Path | None = None,
                  uploads: dict[str, str] | None = None) -> list[SnapshotIn]:
    """Rows of a totals CSV (bin_id,image,record_qty[,captured_at]) or a line CSV (bin_id,image,sku,qty[,...]), told
    apart by the header (from `src`, or `text` named `src`); paths relative to `base`.

    With `uploads` (file name -> sha256 of the photos uploaded with it, as the server gets them) an image is one of
    those names or a URI, never a path: the server reads no file it was not sent or allowed."""
    base = base or src.parent
    text = read_text(src) if text is None else text
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))  # str.splitlines() would drop a quoted newline and split at U+2028
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        line_csv = is_line_csv(src, columns)
        missing = [c for c in (LINE_COLUMNS if line_csv else REQUIRED_COLUMNS) if c not in columns]
        if missing:
            raise DataError(src, f"CSV needs columns bin_id,image,record_qty[,captured_at] (totals) or {LINE_HEADER} (SKU "
                                 f"lines); missing {','.join(missing)} (found {','.join(columns) or 'no header'})")
        reader.fieldnames = columns
        rows = numbered_rows(reader)
    except csv.Error as e:
        raise DataError(src, f"not a readable CSV ({e})") from None
    if line_csv:
        return line_csv_snapshots(src, rows, base, uploads)
    return once_each([(csv_row(src, line, row, base, uploads), f"{src}:{line}") for line, row in rows])


def numbered_rows(reader: csv.DictReader) -> list[tuple[int, dict]]:
    """The rows that are not blank, each with the file line it starts on (a quoted field may span lines)."""
    rows, start = [], reader.line_num + 1
    for row in reader:
        if any(v.strip() if isinstance(v, str) else v for v in row.values()):
            rows.append((start, row))
        start = reader.line_num + 1
    return rows


def read_text(src: Path) -> str:
    try:
        return read_regular(src, MAX_SOURCE_BYTES, "CSV").decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(src, "not a UTF-8 text CSV") from None


def is_line_csv(src: Path, columns: list[str]) -> bool:
    """Does the header give SKU lines (sku, qty) rather than totals (record_qty)? Both, or unknown line columns: refused."""
    if "sku" not in columns and "qty" not in columns:
        return False
    if "record_qty" in columns:
        raise DataError(f"{src}:1", "the header mixes the totals CSV (record_qty) with the line CSV (sku, qty): give "
                                    f"bin_id,image,record_qty[,captured_at] or {LINE_HEADER}; a line CSV's record is the sum of its lines")
    unknown = [c for c in columns if c not in LINE_COLUMNS + LINE_OPTIONAL]
    if unknown:
        raise DataError(f"{src}:1", f"unknown column(s) {','.join(unknown)}: a line CSV has {LINE_HEADER}")
    return True


def csv_row(src: Path, line: int, row: dict, base: Path, uploads: dict[str, str] | None) -> SnapshotIn:
    where = f"{src}:{line}"
    if None in row:
        raise DataError(where, "more fields than the header has columns")
    bin_id, image = bin_and_image(row.get("bin_id") or "", row.get("image") or "", where, base, uploads)
    return SnapshotIn(bin_id, image, parse_record(row.get("record_qty"), where), parse_time(row.get("captured_at"), where))


def line_csv_snapshots(src: Path, rows: list[tuple[int, dict]], base: Path, uploads: dict[str, str] | None) -> list[SnapshotIn]:
    """One snapshot per bin_id and image, its lines the rows that name both (in any order); record_qty their sum."""
    bins: dict[tuple[str, str], BinRecord] = {}
    for line, row in rows:
        line_csv_row(f"{src}:{line}", row, base, uploads, bins)
    return once_each([(record.snapshot(), record.where) for record in bins.values()])


def line_csv_row(where: str, row: dict, base: Path, uploads: dict[str, str] | None, bins: dict) -> None:
    """Add one row of a line CSV to its bin. A row with an empty sku and qty 0 says the record lists nothing for the bin."""
    if None in row:
        raise DataError(where, "more fields than the header has columns")
    bin_id, image = bin_and_image(row.get("bin_id") or "", row.get("image") or "", where, base, uploads)
    raw_sku = row.get("sku") or ""
    row = {k: (v or "").strip() for k, v in row.items()}
    stamp = parse_time(row.get("captured_at"), where)
    record = bins.setdefault((bin_id, image), BinRecord(bin_id, image, stamp, where))
    if stamp != record.captured_at:
        raise DataError(where, f"bin {bin_id!r}: captured_at {row.get('captured_at') or '(none)'!r} differs from "
                               f"{record.captured_at.isoformat() if record.captured_at else '(none)'} at {record.where}: "
                               "the rows of one bin snapshot share one time")
    sku = record_text(raw_sku, where, "sku").strip()
    if sku:
        record.add(sku_line(row, sku, where), where)
    elif line_qty(row.get("qty"), where) == 0:
        record.add_nothing(where)
    else:
        raise DataError(where, f"empty sku with qty {row['qty']}: give the SKU, or qty 0 to say the record lists "
                               "nothing for this bin")


# ---------------------------------------------------------------- JSON


def json_snapshots(doc, where: str, uploads: dict[str, str] | None, base: Path | None = None) -> list[SnapshotIn]:
    """The bins of a records document {"bins": [{"bin_id", "image", "captured_at"?, "record_qty"?, "lines"?: [{"sku",
    "qty", "length"?, "width"?, "height"?, "unit"?, "weight"?, "weight_unit"?}]}]}, checked as a line CSV is.

    With lines, record_qty is optional and must be their sum; without, it is required (a totals-only bin). `uploads`
    as for csv_snapshots; else paths are relative to `base`. A refusal names the bin by its index (bins[i])."""
    bins = doc.get("bins") if isinstance(doc, dict) else None
    if not isinstance(bins, list) or set(doc) != {"bins"}:
        raise DataError(where, 'expected a JSON object {"bins": [{"bin_id", "image", "record_qty"?, "lines"?: [...]}]}')
    if len(bins) > MAX_BINS:
        raise DataError(where, f"{len(bins):,} bins: more than the limit of {MAX_BINS:,} in one document")
    return once_each([(json_bin(item, f"{where} bins[{i}]", base or Path.cwd(), uploads), f"{where} bins[{i}]")
                      for i, item in enumerate(bins)])


def json_text(item: dict, key: str, where: str) -> str:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise DataError(where, f"{key} must be text, got {type(value).__name__}")
    return value or ""


def json_object(item, keys: tuple[str, ...], where: str, what: str) -> dict:
    if not isinstance(item, dict):
        raise DataError(where, f"expected {what} (an object with {', '.join(keys)})")
    unknown = sorted(str(k) for k in set(item) - set(keys))
    if unknown:
        raise DataError(where, f"unknown field(s) {', '.join(unknown)[:200]}: {what} has {', '.join(keys)}")
    return item


def json_bin(item, where: str, base: Path, uploads: dict[str, str] | None) -> SnapshotIn:
    item = json_object(item, BIN_KEYS, where, "a bin")
    bin_id, image = bin_and_image(json_text(item, "bin_id", where), json_text(item, "image", where), where, base, uploads)
    where = f"{where} (bin {bin_id!r})"
    stamp = parse_time(json_text(item, "captured_at", where), where)
    record_qty, lines = item.get("record_qty"), item.get("lines")
    if lines is None:
        if record_qty is None:
            raise DataError(where, "give record_qty, or the record's lines")
        return SnapshotIn(bin_id, image, check_record(record_qty, where), stamp)
    if not isinstance(lines, list):
        raise DataError(where, "lines must be a list of {\"sku\", \"qty\", ...} objects")
    if len(lines) > MAX_LINES:
        raise DataError(where, f"{len(lines):,} SKU lines: more than the limit of {MAX_LINES:,} per bin")
    record = BinRecord(bin_id, image, stamp, where)
    for j, line in enumerate(lines):
        at = f"{where} lines[{j}]"
        line = json_object(line, LINE_KEYS, at, "a SKU line")
        sku = record_text(json_text(line, "sku", at), at, "sku").strip()
        if not sku:
            raise DataError(at, f"sku must be 1-{MAX_TEXT} characters (a bin whose record lists nothing has \"lines\": [])")
        record.add(sku_line(line, sku, at), at)
    snapshot = record.snapshot()
    if record_qty is not None and check_record(record_qty, where) != snapshot.record_qty:
        raise DataError(where, f"record_qty {record_qty} is not the sum of its lines' qty ({snapshot.record_qty})")
    return snapshot


# ---------------------------------------------------------------- photos


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
        """A photo file's bytes (`read_photo`: a regular file within the photo byte limit, as every command reads photos)
        or an upload's (within the same limit); else the DataError. URIs keep the policy's limit too (`fetch_all`)."""
        limit = max_image_bytes()
        if image.startswith(UPLOAD_SCHEME):
            data = self.uploads.get(image[len(UPLOAD_SCHEME):])
            if data is not None and len(data) > limit:
                return DataError(image, f"larger than the limit of {limit:,} bytes ({len(data):,} bytes)")
            return data if data is not None else DataError(image, "no uploaded photo with this digest")
        try:
            return read_photo(image)
        except DataError as e:
            return e

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
