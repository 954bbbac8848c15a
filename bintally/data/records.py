"""An inventory record's SKU lines: what a warehouse system says a bin holds, line by line.

ABID's metadata (`BIN_FCSKU_DATA`) and a warehouse export list, per bin, each SKU with its quantity, dimensions and
weight. bintally keeps lengths in inches and weights in pounds (ABID's units) and converts metric input on reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bintally.errors import DataError
from bintally.text import TextError, check_text, identifier_problem, whole_number

MAX_TEXT = 200  # characters of a bin id or SKU
MAX_LINES = 1000  # SKU lines in one bin; a record with more is refused (a bin holds tens, not thousands)
LENGTH_UNITS = {"in": 1.0, "inch": 1.0, "inches": 1.0, "cm": 1 / 2.54, "mm": 1 / 25.4, "m": 100 / 2.54}
WEIGHT_UNITS = {"lb": 1.0, "lbs": 1.0, "pound": 1.0, "pounds": 1.0, "oz": 1 / 16, "kg": 2.2046226218, "g": 0.0022046226218}


@dataclass(frozen=True)
class SkuLine:
    """One line of a bin's record: a SKU, its recorded quantity, and (when known) one unit's size and weight."""

    sku: str
    qty: int
    length_in: float | None = None
    width_in: float | None = None
    height_in: float | None = None
    weight_lb: float | None = None

    @property
    def has_dimensions(self) -> bool:
        return None not in (self.length_in, self.width_in, self.height_in)

    @property
    def volume_in3(self) -> float | None:
        """One unit's volume in cubic inches, None when a dimension is missing."""
        return self.length_in * self.width_in * self.height_in if self.has_dimensions else None

    @property
    def longest_in(self) -> float | None:
        return max(self.length_in, self.width_in, self.height_in) if self.has_dimensions else None

    def to_json(self) -> dict:
        return {"sku": self.sku, "qty": self.qty, "length_in": self.length_in, "width_in": self.width_in,
                "height_in": self.height_in, "weight_lb": self.weight_lb}


def record_text(value, where: str, what: str, limit: int | None = MAX_TEXT, identifier: bool = True) -> str:
    """A bin id, SKU or image reference as the record gives it: one line of text, at most `limit` characters; DataError
    naming `where` for a control character (a newline would be dropped somewhere and collide with another id) or
    for more characters (never cut short); an `identifier` (bin id, SKU) also for a form that looks like another id."""
    text = value if isinstance(value, str) else str(value)
    try:
        check_text(text, what)
    except TextError as e:
        raise DataError(where, str(e)) from None
    if limit is not None and len(text) > limit:
        raise DataError(where, f"{what} is longer than {limit} characters")
    problem = identifier_problem(text) if identifier else None
    if problem is not None:
        raise DataError(where, f"{what} {text[:40]!r} {problem}")
    return text


def whole_quantity(value, where: str, what: str = "quantity") -> int:
    """A line's quantity: a whole number from 0 (JSON int, or text such as "3"); DataError naming `where` otherwise."""
    from bintally.data.metadata import MAX_COUNT

    if isinstance(value, str) and whole_number(value) is not None:
        value = whole_number(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(where, f"{what} {value!r} is not a whole number")
    if not 0 <= value <= MAX_COUNT:
        raise DataError(where, f"{what} {value} is outside 0-{MAX_COUNT:,}")
    return value


def measure(value, unit, units: dict[str, float], where: str, what: str) -> float | None:
    """A length or weight converted by `units` (to inches or pounds); None when absent; DataError when unusable."""
    if value is None or value == "":
        return None
    factor = units.get(str(unit or "").strip().lower())
    if factor is None:
        raise DataError(where, f"{what}: unknown unit {unit!r}; use one of {', '.join(units)}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(where, f"{what} {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise DataError(where, f"{what} {value!r} must be a finite number of 0 or more")
    return number * factor


def metadata_lines(doc: dict, where) -> tuple[SkuLine, ...]:
    """The SKU lines of an ABID metadata document (`BIN_FCSKU_DATA`), lengths in inches and weights in pounds."""
    skus = doc.get("BIN_FCSKU_DATA") or {}
    if not isinstance(skus, dict):
        raise DataError(where, "BIN_FCSKU_DATA is not an object of SKU lines")
    if len(skus) > MAX_LINES:
        raise DataError(where, f"{len(skus):,} SKU lines: more than the limit of {MAX_LINES:,} lines per bin")
    lines = []
    for key, item in skus.items():
        if not isinstance(item, dict):
            raise DataError(where, f"SKU line {key!r} is not an object")
        at = f"{where} (SKU {str(key)[:40]!r})"
        size = {name: measure_field(item.get(name), LENGTH_UNITS, at, name) for name in ("length", "width", "height")}
        lines.append(SkuLine(record_text(item.get("asin") or key, at, "SKU"), whole_quantity(item.get("quantity"), at),
                             size["length"], size["width"], size["height"], measure_field(item.get("weight"), WEIGHT_UNITS, at, "weight")))
    return tuple(lines)


def measure_field(field, units: dict[str, float], where: str, what: str) -> float | None:
    """ABID's {"unit": ..., "value": ...} (or a bare number in the default unit: inches, pounds)."""
    if field is None:
        return None
    if isinstance(field, dict):
        return measure(field.get("value"), field.get("unit"), units, where, what)
    return measure(field, next(iter(units)), units, where, what)



def metadata_record(path) -> tuple[int, dict]:
    """An ABID metadata file's EXPECTED_QUANTITY and its whole document (for `metadata_lines`); DataError naming the
    file when it is unusable."""
    from bintally.data.metadata import json_type, load_json, parse_count

    doc = load_json(path, "metadata file")
    if not isinstance(doc, dict):
        raise DataError(path, f"expected a JSON object with EXPECTED_QUANTITY, found {json_type(doc)}")
    if "EXPECTED_QUANTITY" not in doc:
        raise DataError(path, "no EXPECTED_QUANTITY field")
    return parse_count(doc["EXPECTED_QUANTITY"], path), doc
