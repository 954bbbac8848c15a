"""`SplitConfig`: the settings of `bintally data split` (without importing pandas or scikit-learn), and the file lists it reads."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from bintally.data.metadata import load_json
from bintally.errors import ConfigError, DataError
from bintally.labels import LABEL_SETTINGS, OVERFLOW_WORDS, LabelSpace, overflow_flag, overflow_word
from bintally.settings import check_range, described_settings, setting
from bintally.text import whole_number

MAX_SEED = 2**32 - 1  # scikit-learn's random_state range
# pHash Hamming distance at or under which two photos count as the same bin scene. Measured on the
# 8,053-photo mirror: pairs at <= 6 are the same bin a moment apart; at 8 they are mostly different
# bins of the same type; a random pair's median is 30 (docs/data.md).
NEAR_DUPLICATE_DISTANCE = 6
ID_BLOCK = 10
NEAR_DUPLICATE_HELP = "pHash bits within which two photos are near-duplicates."


@dataclass
class SplitConfig:
    fractions: tuple[float, float, float] = setting((0.8, 0.1, 0.1), separator=",", help="train,val,test fractions, e.g. 0.8,0.1,0.1.")
    seed: int = setting(0, low=0, high=MAX_SEED, help="Seed for the group shuffle.")
    max_count: int = setting(5, low=0, help="Largest count with its own class (a --file-list sets it from its counts).")
    overflow: bool = setting(True, words=OVERFLOW_WORDS, help="Counts above --max-count: one overflow class, or excluded "
                                                              "(exclude with a --file-list).")
    min_count: int = setting(0, low=0, help="Smallest count with its own class (a --file-list sets it from its counts).")
    near_duplicate_distance: int = setting(NEAR_DUPLICATE_DISTANCE, low=0, high=64, help=NEAR_DUPLICATE_HELP)
    id_block: int = setting(ID_BLOCK, low=1, cli=False)  # ids in one block of consecutive ids form one group
    file_list: str | None = setting(None, help="Udacity file_list.json: split only the ids it lists, with the counts it lists.")

    def __post_init__(self):
        self.fractions = checked_fractions(self.fractions)
        for f, spec in described_settings(self):
            if spec.low is not None:  # the whole numbers, each in its range
                check_range(f.name, getattr(self, f.name), int(spec.low), spec.high, whole=True)
        _ = self.labels  # raises ConfigError for a bad label space

    @property
    def labels(self) -> LabelSpace:
        return LabelSpace(self.min_count, self.max_count, self.overflow)

    def to_dict(self) -> dict:
        """As a split manifest records it (overflow spelled 'class' or 'exclude')."""
        return asdict(self) | {"overflow": overflow_word(self.overflow)}

    @classmethod
    def for_options(cls, min_count: int | None = None, max_count: int | None = None, overflow: str | None = None,
                    file_list: str | None = None, **others) -> "SplitConfig":
        """Settings left out (None) take their defaults; with a file list, the label space is the counts it lists.
        overflow is spelled as on the command line ('class' or 'exclude')."""
        space = {f.name: f.default for f in fields(cls) if f.name in LABEL_SETTINGS}
        if file_list:
            counts = file_list_counts(file_list)
            space = {"min_count": min(counts), "max_count": max(counts), "overflow": False}
        given = {"min_count": min_count, "max_count": max_count, "overflow": None if overflow is None else overflow_flag(overflow)}
        space |= {k: v for k, v in given.items() if v is not None}
        return cls(file_list=file_list, **space, **others)


def checked_fractions(fractions) -> tuple[float, float, float]:
    problem = ConfigError(f"fractions must be three numbers >= 0 for train, val and test that sum to 1, got {fractions!r}")
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise problem from None
    if len(values) != 3 or not all(math.isfinite(f) and f >= 0 for f in values) or abs(sum(values) - 1) > 1e-6:
        raise problem
    return values


def class_names(max_count: int, overflow: bool = True, min_count: int = 0) -> list[str]:
    """Label i is the count min_count + i; the last label is the overflow class, more than max_count items (if there is one)."""
    return LabelSpace(min_count, max_count, overflow).names


def read_file_list_doc(path: str | Path) -> dict[str, list]:
    doc = load_json(path, "file list")
    if (not isinstance(doc, dict) or not doc or not all(isinstance(v, list) for v in doc.values())
            or not all(isinstance(p, str) for v in doc.values() for p in v)):
        raise DataError(path, 'expected a Udacity file list: {"<count>": ["metadata/<id>.json", ...], ...}')
    return doc


def read_file_list(path: str | Path) -> set[str]:
    """Ids named by a Udacity-style file_list.json ({"1": ["metadata/523.json", ...], ...})."""
    return {Path(p).stem for paths in read_file_list_doc(path).values() for p in paths}


def file_list_counts(path: str | Path) -> list[int]:
    """The counts a file list is keyed by (the capstones' list has 1..5)."""
    keys = list(read_file_list_doc(path))
    counts = [whole_number(k) for k in keys]
    if any(c is None or c < 0 for c in counts):
        raise DataError(path, f"file list keys must be counts such as \"1\", found {keys[:5]}")
    return sorted(counts)
