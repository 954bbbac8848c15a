"""An inventory record's SKU lines: what a warehouse system says a bin holds, line by line.

ABID's metadata (`BIN_FCSKU_DATA`) and a warehouse export list, per bin, each SKU with its quantity, dimensions and
weight. bintally keeps lengths in inches and weights in pounds (ABID's units) and converts metric input on reading.
"""

from __future__ import annotations

from dataclasses import dataclass

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
