"""Record errors as a warehouse makes them: a seeded generator that corrupts true records, line by line.

The truth is each bin's record as it should be (ABID's metadata lines of the photos); `corrupt_records` makes a
share `rate` of the bins wrong, drawn uniformly, each with one error of the mix:

    units_over      one line records 1 or 2 units more than the bin holds (picked without a scan, damaged, lost)
    units_under     one line records 1 or 2 units fewer than the bin holds (a unit stowed twice, found)
    missing_line    a SKU stowed but never recorded: one whole line gone (bins of 2 lines or more)
    phantom_line    a SKU picked or moved but still recorded: a line drawn from another bin, with its size and
                    weight, usually 1-2 units
    recorded_empty  a bin that holds items recorded as empty (no lines)
    empty_recorded  an empty bin recorded with another bin's lines (the record kept what the bin held before)

A bin gets one of the errors that can happen to it (an empty bin only `empty_recorded`; `units_under` needs a line of
2 units or more, since 1 - 1 is a missing line; `missing_line` needs 2 lines), drawn with the mix's shares renormalised
over those. Every error changes the bin's total, so a totals-only source sees each one too (`totals`).
Quantities never go below 1 on a line that stays, and never below 0.

Mixes (shares of the errors):
- `default`: unit errors lead (over 0.30, under 0.20, a quarter of them by 2): miscounts at pick and stow are the most
  common inventory error, and shrinkage (the record above what is there) more common than overage; phantom lines 0.25
  (moves and picks to the wrong bin leave the SKU recorded where it no longer is); missing lines 0.15; the empty cases
  0.05 each (rare but costly: a bin recorded empty is never picked from). Phantom quantities 1 (65%), 2 (25%), 3-5.
- `shifted`: a clearly different warehouse, for robustness checks only, never for fitting: phantom lines 0.45 with
  2-6 units, large over-counts 0.35 (2-5 units), 0.05 each of the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from bintally.data.records import SkuLine
from bintally.errors import ConfigError

ERRORS = ("units_over", "units_under", "missing_line", "phantom_line", "recorded_empty", "empty_recorded")
CLEAN = ""  # the error type of a bin left as it was


@dataclass(frozen=True)
class ErrorMix:
    """The shares of the error types, and how many units a unit error moves and a phantom line holds."""

    name: str
    shares: dict[str, float]  # error type -> share (renormalised over the errors a bin can have)
    unit_steps: dict[int, float]  # units a units_over / units_under error adds or takes -> probability
    phantom_qty: dict[int, float]  # units of a phantom line -> probability


MIXES = {
    "default": ErrorMix("default", {"units_over": 0.30, "units_under": 0.20, "missing_line": 0.15, "phantom_line": 0.25,
                                    "recorded_empty": 0.05, "empty_recorded": 0.05},
                        {1: 0.75, 2: 0.25}, {1: 0.65, 2: 0.25, 3: 0.05, 4: 0.03, 5: 0.02}),
    "shifted": ErrorMix("shifted", {"units_over": 0.35, "units_under": 0.05, "missing_line": 0.05, "phantom_line": 0.45,
                                    "recorded_empty": 0.05, "empty_recorded": 0.05},
                        {2: 0.3, 3: 0.3, 4: 0.2, 5: 0.2}, {2: 0.3, 3: 0.25, 4: 0.2, 5: 0.15, 6: 0.1}),
}

Record = tuple[SkuLine, ...]


@dataclass
class Corruption:
    """What `corrupt_records` made: the records as recorded, which bins are wrong, and each bin's error type."""

    records: list[Record]
    corrupted: np.ndarray  # bool [N]
    errors: np.ndarray  # str [N]: one of ERRORS, CLEAN for a bin left right

    def totals(self) -> np.ndarray:
        return totals(self.records)


def totals(records: list[Record]) -> np.ndarray:
    """Each record's total quantity (what a totals-only source holds)."""
    return np.array([sum(line.qty for line in record) for record in records], dtype=np.int64)


def total_records(counts) -> list[Record]:
    """Records of a totals-only truth: one line without size or weight holding each bin's count (none for 0)."""
    return [(SkuLine(f"bin-{i}", int(c)),) if c > 0 else () for i, c in enumerate(np.asarray(counts, dtype=np.int64))]


def mix_named(mix: str | ErrorMix) -> ErrorMix:
    if isinstance(mix, ErrorMix):
        return mix
    if mix not in MIXES:
        raise ConfigError(f"unknown error mix {mix!r}: use one of {', '.join(MIXES)}")
    return MIXES[mix]


def corrupt_records(truth: list[Record], rate: float, mix: str | ErrorMix = "default", seed: int = 0) -> Corruption:
    """Records with round(rate * N) bins made wrong, drawn uniformly (seeded); `truth` is left as it was."""
    if not 0 <= rate <= 1:
        raise ConfigError(f"error rate must be a share of the bins from 0 to 1, got {rate}")
    mix = mix_named(mix)
    rng = np.random.default_rng(seed)
    records, errors = list(truth), np.full(len(truth), CLEAN, dtype=object)
    donors = [i for i, record in enumerate(truth) if any(line.qty > 0 for line in record)]
    for i in np.sort(rng.choice(len(truth), size=int(round(rate * len(truth))), replace=False)):
        kind = draw_error(truth[i], mix, rng, bool(donors))
        if kind is None:
            continue
        records[i], errors[i] = apply_error(kind, truth[i], truth, donors, i, mix, rng), kind
    errors = errors.astype(str)
    return Corruption(records, errors != CLEAN, errors)


def possible_errors(record: Record, have_donors: bool) -> list[str]:
    """The errors that can happen to a bin holding `record` (and each changes its total)."""
    filled = [line for line in record if line.qty > 0]
    if not filled:
        return ["empty_recorded"] if have_donors else []
    kinds = ["units_over", "recorded_empty"] + (["phantom_line"] if have_donors else [])
    if any(line.qty >= 2 for line in filled):
        kinds.append("units_under")
    if len(filled) >= 2:
        kinds.append("missing_line")
    return kinds


def draw_error(record: Record, mix: ErrorMix, rng: np.random.Generator, have_donors: bool) -> str | None:
    kinds = possible_errors(record, have_donors)
    weights = np.array([mix.shares.get(k, 0.0) for k in kinds])
    if not kinds or weights.sum() <= 0:
        return None
    return kinds[rng.choice(len(kinds), p=weights / weights.sum())]


def draw(table: dict[int, float], rng: np.random.Generator) -> int:
    values = list(table)
    weights = np.array([table[v] for v in values], dtype=float)
    return int(values[rng.choice(len(values), p=weights / weights.sum())])


def apply_error(kind: str, record: Record, truth: list[Record], donors: list[int], i: int, mix: ErrorMix,
                rng: np.random.Generator) -> Record:
    filled = [k for k, line in enumerate(record) if line.qty > 0]
    if kind == "recorded_empty":
        return ()
    if kind == "empty_recorded":
        return tuple(line for line in truth[other_bin(donors, i, rng)] if line.qty > 0)
    if kind == "missing_line":
        gone = filled[rng.integers(len(filled))]
        return record[:gone] + record[gone + 1:]
    if kind == "phantom_line":
        return record + (phantom_line(record, truth, donors, i, mix, rng),)
    step = draw(mix.unit_steps, rng)
    if kind == "units_over":
        k = filled[rng.integers(len(filled))]
        return record[:k] + (replace(record[k], qty=record[k].qty + step),) + record[k + 1:]
    several = [k for k in filled if record[k].qty >= 2]
    k = several[rng.integers(len(several))]
    return record[:k] + (replace(record[k], qty=max(1, record[k].qty - step)),) + record[k + 1:]


def other_bin(donors: list[int], i: int, rng: np.random.Generator) -> int:
    """A random non-empty bin other than `i` (`i` itself only when it is the only one)."""
    others = [d for d in donors if d != i] or donors
    return others[rng.integers(len(others))]


def phantom_line(record: Record, truth: list[Record], donors: list[int], i: int, mix: ErrorMix,
                 rng: np.random.Generator) -> SkuLine:
    """A line of another bin (a SKU this bin does not hold, when one can be found in a few tries), 1-2 units usually."""
    held = {line.sku for line in record}
    for _ in range(10):
        source = [line for line in truth[other_bin(donors, i, rng)] if line.qty > 0]
        line = source[rng.integers(len(source))]
        if line.sku not in held:
            break
    else:
        line = replace(line, sku=f"{line.sku}-phantom")
    return replace(line, qty=draw(mix.phantom_qty, rng))
