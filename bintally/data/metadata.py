"""Reading ABID metadata JSON files (`metadata/<id>.json`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bintally.errors import DataError
from bintally.io import MAX_SOURCE_BYTES, loads_json, read_regular

# no bin holds this many items: a larger count is a typo, and would not fit the manifest's 64-bit column
MAX_COUNT = 1_000_000
WHOLE_NUMBER_TEXT = re.compile(r"\s*[0-9]+(\.0*)?\s*")  # ASCII digits: int() also takes "1_000" and "１２"
# an ABID metadata file is a few kB; MAX_LINES (data/records.py) lines of long names stay well under this
MAX_METADATA_BYTES = 4_000_000


@dataclass(frozen=True)
class BinMetadata:
    count: int
    n_asins: int


def parse_count(value, path) -> int:
    """A count must be a whole number from 0 to MAX_COUNT (JSON int, or text like "3")."""
    if isinstance(value, bool):
        raise DataError(path, f"count is not an integer: {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and WHOLE_NUMBER_TEXT.fullmatch(value):  # "3", or "3.0" from a spreadsheet
        value = int(float(value))
    if not isinstance(value, int):
        raise DataError(path, f"count is not an integer: {value!r}")
    if value < 0:
        raise DataError(path, f"count is negative: {value}")
    if value > MAX_COUNT:
        raise DataError(path, f"count is implausibly large: {value} (over {MAX_COUNT:,})")
    return value


def load_json(path: str | Path, what: str, limit: int | None = None):
    """A JSON document, or a DataError naming the file: missing (`no such <what>`), not a regular file, over `limit`
    bytes (a metadata file's by default MAX_METADATA_BYTES, any other's MAX_SOURCE_BYTES) or malformed."""
    path = Path(path)
    if limit is None:
        limit = MAX_METADATA_BYTES if what == "metadata file" else MAX_SOURCE_BYTES
    data = read_regular(path, limit, what)
    try:
        return loads_json(data)
    except ValueError as e:  # JSONDecodeError, JsonError, UnicodeDecodeError
        raise DataError(path, f"malformed JSON ({e})") from None
    except RecursionError:
        raise DataError(path, "malformed JSON (nested too deeply)") from None


def json_type(doc) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true or false", type(None): "null"}
    return names.get(type(doc), "a number")


def read_metadata(path: str | Path) -> BinMetadata:
    """Parse one metadata file; raise DataError with a one-line reason if it cannot be used."""
    doc = load_json(path, "metadata file")
    if not isinstance(doc, dict):
        raise DataError(path, f"expected a JSON object with EXPECTED_QUANTITY, found {json_type(doc)}")
    if "EXPECTED_QUANTITY" not in doc:
        raise DataError(path, "no EXPECTED_QUANTITY field")
    count = parse_count(doc["EXPECTED_QUANTITY"], path)
    skus = doc.get("BIN_FCSKU_DATA") or {}
    return BinMetadata(count=count, n_asins=len(skus) if isinstance(skus, dict) else 0)
