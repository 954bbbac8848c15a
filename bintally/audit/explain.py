"""One line per bin that a shift lead understands: why its record looks wrong, from the strongest evidence.

Each rule below states one piece of evidence when it holds; the two strongest are joined with "; ", and a note that
the volume was not checked follows when a line lacks dimensions. A bin where no rule holds says that the photo
agrees with the record, or how far apart they are.

    recorded empty, items seen   "recorded empty; the photo shows about 3 items"          P(count = 0) < 0.3
    lines recorded, bin empty    "3 SKU lines recorded (9 items); the bin looks empty"     P(count = 0) >= 0.5
    count apart                  "the photo shows about 2 items; the record says 9 on 3 SKU lines"
                                                                                           P(the record's class) < 0.2
                                                                                           and the classes differ
    more lines than items        "5 SKU lines recorded; the photo shows about 2 items"     P(count < lines) >= 0.5 (when
                                                                                           the counts are not apart)
    too many to fit              "a 14-inch item recorded 4 times; at most 2 fit"          its quantity x unit volume over a bin
    bin overfilled               "the recorded items would fill 180% of a bin"             recorded volume over 1.2 bins
    no dimensions (note)         "lines without dimensions: volume not checked"

Explanations hold the record and the photo's count, so they belong to reviewers: a blind counter never sees them.
"""

from __future__ import annotations

import numpy as np

from bintally.audit.record_scorer import BinConstants, CountDistribution, LineTable, fit_count

EMPTY_SEEN = 0.3  # P(count = 0) below this: a bin recorded empty holds items
EMPTY_LOOKS = 0.5  # P(count = 0) at least this: the bin looks empty
APART = 0.2  # P(count = record) below this: the photo and the record disagree
FEWER_THAN_LINES = 0.5  # P(count < lines with units) at least this
OVERFILL = 1.2  # recorded volume above this many bins
SHOWN = 2  # pieces of evidence in one explanation
FIT_STRENGTH = 0.7  # how the sizes rank against the photo's evidence (a probability): a bin's volume is only estimated


def items(n: int) -> str:
    return f"{n} item" + ("" if n == 1 else "s")


def photo_reading(count: int, max_count: int, overflow: bool) -> str:
    """'about 3 items', or 'more than 20 items' for the overflow class."""
    if overflow and count > max_count:
        return f"more than {items(max_count)}"
    return f"about {items(count)}" if count else "no items"


def explain(dist: CountDistribution, records: list[tuple], totals, predicted, constants: BinConstants = BinConstants()) -> list[str]:
    """The explanation of each bin: `records` its lines (() for a totals-only bin), `totals` its record total,
    `predicted` the model's count (Prediction.counts)."""
    totals = np.asarray(totals, dtype=np.int64)
    held = np.array([sum(1 for line in r if line.qty > 0) for r in records], dtype=np.int64)
    evidence = {"p_zero": dist.explicit[:, 0] if dist.space.min_count == 0 else np.zeros(len(totals)),
                "p_class": dist.space.probability_of(dist.probs, totals), "p_fewer": dist.p_below(held),
                "agrees": same_class(dist.space, totals, np.asarray(predicted))}
    table = LineTable.of(records, constants)
    bulky = bulkiest_items(table, constants)
    fill = table.per_bin(table.qty * table.volume) / constants.bin_volume_in3
    no_dims = table.per_bin(table.no_dims.astype(float)) > 0
    return [sentence(i, totals, held, np.asarray(predicted), evidence, bulky, fill, no_dims, dist.space) for i in range(len(totals))]


def bulkiest_items(table: LineTable, constants: BinConstants) -> dict[str, np.ndarray]:
    """Each bin's bulkiest line with units: its quantity, how many fit, its longest side, whether it has dimensions."""
    volume, qty = table.bulkiest()
    longest, measured, last = np.zeros(table.n), np.zeros(table.n, bool), table.bulkiest_lines()
    longest[table.bin[last]], measured[table.bin[last]] = table.longest[last], ~table.no_dims[last]
    return {"qty": qty, "fit": fit_count(volume, constants), "longest": longest, "measured": measured}


def sentence(i: int, totals, held, predicted, evidence: dict, bulky: dict, fill, no_dims, space) -> str:
    record, lines, count = int(totals[i]), int(held[i]), int(predicted[i])
    seen = photo_reading(count, space.max_count, space.overflow)
    found = []  # (strength, text)
    if record == 0 and evidence["p_zero"][i] < EMPTY_SEEN and space.min_count == 0:
        found.append((1 - evidence["p_zero"][i], f"recorded empty; the photo shows {seen}"))
    if record > 0 and evidence["p_zero"][i] >= EMPTY_LOOKS:
        what = f"{lines} SKU line{'s' if lines != 1 else ''} recorded ({items(record)})" if lines else f"the record says {items(record)}"
        found.append((evidence["p_zero"][i], f"{what}; the bin looks empty"))
    elif record > 0 and evidence["p_class"][i] < APART and not evidence["agrees"][i]:
        on_lines = f" on {lines} SKU lines" if lines >= 2 else ""
        found.append((1 - evidence["p_class"][i], f"the photo shows {seen}; the record says {record}{on_lines}"))
    elif lines >= 2 and evidence["p_fewer"][i] >= FEWER_THAN_LINES and evidence["p_zero"][i] < EMPTY_LOOKS:
        found.append((evidence["p_fewer"][i], f"{lines} SKU lines recorded; the photo shows {seen}"))
    if bulky["measured"][i] and bulky["qty"][i] > bulky["fit"][i]:
        found.append((FIT_STRENGTH, f"a {bulky['longest'][i]:.0f}-inch item recorded {int(bulky['qty'][i])} times; "
                                    f"at most {int(bulky['fit'][i])} fit"))
    elif fill[i] > OVERFILL and not no_dims[i]:
        found.append((FIT_STRENGTH - 0.1, f"the recorded items would fill {fill[i]:.0%} of a bin"))
    found.sort(key=lambda pair: -pair[0])
    texts = [text for _, text in found[:SHOWN]] or [quiet(record, seen, evidence["agrees"][i])]
    if no_dims[i]:
        texts.append("lines without dimensions: volume not checked")
    return "; ".join(texts)


def same_class(space, records: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Whether the photo's count reads as the record: the same class (any record above max_count reads as "21+")."""
    classes = space.class_of(records)
    return (classes >= 0) & (classes == space.class_of(counts))


def quiet(record: int, seen: str, agrees: bool) -> str:
    """What to say when no rule holds."""
    if agrees:
        return f"the photo agrees with the record ({items(record)}); no strong sign of an error"
    return f"the photo shows {seen}; the record says {record} (weak evidence)"
