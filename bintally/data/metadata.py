"""Reading ABID metadata JSON files (`metadata/<id>.json`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bintally.errors import DataError


@dataclass(frozen=True)
class BinMetadata:
    count: int
    n_asins: int


def parse_count(value, path) -> int:
    """A count must be a non-negative whole number (JSON int, or text like "3")."""
    if isinstance(value, bool):
        raise DataError(path, f"count is not an integer: {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int):
        raise DataError(path, f"count is not an integer: {value!r}")
    if value < 0:
        raise DataError(path, f"count is negative: {value}")
    return value


def load_json(path: str | Path, what: str):
    """A JSON document, or a DataError naming the file: missing (`no such <what>`) or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DataError(path, f"no such {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"malformed JSON ({e})") from None


def read_metadata(path: str | Path) -> BinMetadata:
    """Parse one metadata file; raise DataError with a one-line reason if it cannot be used."""
    doc = load_json(path, "metadata file")
    if not isinstance(doc, dict) or "EXPECTED_QUANTITY" not in doc:
        raise DataError(path, "no EXPECTED_QUANTITY field")
    count = parse_count(doc["EXPECTED_QUANTITY"], path)
    skus = doc.get("BIN_FCSKU_DATA") or {}
    return BinMetadata(count=count, n_asins=len(skus) if isinstance(skus, dict) else 0)
