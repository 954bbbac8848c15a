"""The label space: which counts a model tells apart, and how counts map to class indices and back.

Class i is the count `min_count + i` for counts min_count..max_count; with `overflow`, one last
class stands for "more than max_count" and is scored as max_count + 1 items. Counts outside the
space (below min_count, or above max_count without overflow) have no label.

`class_of` is the one count -> class mapping (training labels, audit records); `decode` turns a model's
probabilities into classes (`bintally.inference.Prediction` carries them to every consumer).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from bintally.errors import ConfigError
from bintally.settings import check_choice, check_range

# how the command line and settings files (config.json, manifests) spell `overflow`: (true, false)
OVERFLOW_WORDS = ("class", "exclude")
# class per photo: the most likely, the distribution's median, the rounded mean, or the hurdle's two-part median
DECODINGS = ("argmax", "median", "expected", "hurdle")
HURDLE_SPLIT = 5  # the hurdle head's parts: counts 0-5, and above
HURDLE_GATE = 0.9  # "hurdle" decoding answers above 5 when P(count > 5) reaches this: the lowest gate whose 5-fold
# out-of-fold 0-5 accuracy is not below the 0-5 model's (benchmarks/whole_range.py; docs/benchmarks.md, "Whole count range")
HURDLE_WINDOW = 1  # above 5, the count whose +-1 neighbourhood is most likely: a count of 14 is useful within one, rarely exact


def overflow_flag(word) -> bool:
    """`overflow` from its spelling in a file or on the command line ('class' or 'exclude')."""
    check_choice("overflow", word, OVERFLOW_WORDS)
    return word == OVERFLOW_WORDS[0]


def overflow_word(overflow: bool) -> str:
    return OVERFLOW_WORDS[0 if overflow else 1]


@dataclass(frozen=True)
class LabelSpace:
    min_count: int = 0
    max_count: int = 5
    overflow: bool = True  # a last class for "more than max_count"

    def __post_init__(self):
        for name in ("min_count", "max_count"):
            check_range(name, getattr(self, name), 0, whole=True)
        if self.min_count > self.max_count:
            raise ConfigError(f"min_count ({self.min_count}) is above max_count ({self.max_count})")
        if not isinstance(self.overflow, bool):
            raise ConfigError(f"overflow must be true or false, got {self.overflow!r}")

    @classmethod
    def from_names(cls, names: list[str]) -> "LabelSpace":
        """Back from class names such as ['0', ..., '5', '6+'] or ['1', ..., '5']."""
        overflow = bool(names) and names[-1].endswith("+")
        counts = [int(n) for n in (names[:-1] if overflow else names)]
        if not counts or counts != list(range(counts[0], counts[0] + len(counts))):
            raise ConfigError(f"class names {names} are not consecutive counts")
        space = cls(counts[0], counts[-1], overflow)
        if space.names != list(names):
            raise ConfigError(f"class names {names} do not form a label space")
        return space

    @classmethod
    def from_dict(cls, values: dict) -> "LabelSpace":
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"not a label space: {values!r} ({e})") from None

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overflow(self) -> "LabelSpace":
        """This space with an overflow class (itself if it has one), so that counts above max_count can be scored."""
        return self if self.overflow else LabelSpace(self.min_count, self.max_count, overflow=True)

    @property
    def n_classes(self) -> int:
        return self.max_count - self.min_count + 1 + int(self.overflow)

    @property
    def names(self) -> list[str]:
        return [str(c) for c in range(self.min_count, self.max_count + 1)] + ([f"{self.max_count + 1}+"] if self.overflow else [])

    @property
    def description(self) -> str:
        extra = f" and {self.max_count + 1}+" if self.overflow else ""
        return f"counts {self.min_count}-{self.max_count}{extra}"

    def class_of(self, counts) -> np.ndarray:
        """Class index of each count; -1 where the count has no class (below min_count, or above max_count without overflow)."""
        counts = np.asarray(counts, dtype=np.int64)
        classes = np.minimum(counts, self.max_count + 1) - self.min_count
        outside = (counts < self.min_count) | ((counts > self.max_count) & (not self.overflow))
        return np.where(outside, -1, classes)

    def label_of(self, counts):
        """Class index of each count, a pandas Series (nullable Int64); <NA> where the count is missing or has no class."""
        import pandas as pd  # here, so that the count server does not import pandas

        counts = pd.Series(counts).astype("Int64")
        known = counts.notna().to_numpy()
        labels = pd.Series(pd.NA, index=counts.index, dtype="Int64")
        labels[known] = self.class_of(counts[known].to_numpy(dtype=np.int64))
        return labels.mask(labels < 0)

    def probability_of(self, probs: np.ndarray, counts) -> np.ndarray:
        """P(count) of each row of probabilities [N, n_classes]: its class's probability, 0 where the count has no class."""
        probs = np.asarray(probs, dtype=np.float64)
        classes = self.class_of(counts)
        return np.where(classes >= 0, probs[np.arange(len(probs)), np.maximum(classes, 0)], 0.0)

    def count_of(self, labels) -> np.ndarray:
        """The count each class index stands for (the overflow class counts as max_count + 1)."""
        return np.asarray(labels, dtype=int) + self.min_count

    def missing_classes(self, labels) -> list[str]:
        present = set(np.asarray(labels, dtype=int).tolist())
        return [name for i, name in enumerate(self.names) if i not in present]

    def decode(self, probs: np.ndarray, method: str = "argmax") -> np.ndarray:
        """Class index per row of probabilities [N, n_classes]."""
        probs = np.asarray(probs, dtype=np.float64)
        if method == "argmax":
            return probs.argmax(-1)
        if method == "median":
            return np.minimum((np.cumsum(probs, -1) < 0.5).sum(-1), probs.shape[-1] - 1)
        if method == "expected":
            return np.rint(probs @ np.arange(probs.shape[-1])).astype(int)
        if method == "hurdle":
            return self.decode_hurdle(probs)
        raise ConfigError(f"unknown decoding {method!r}: use one of {', '.join(DECODINGS)}")

    def decode_hurdle(self, probs: np.ndarray, gate: float = HURDLE_GATE) -> np.ndarray:
        """Where P(count > 5) >= `gate`, the count above 5 whose +-1 window is most likely; else the median of 0-5.

        The plain median of a two-part distribution drifts up whenever the gate is unsure; deciding the part first keeps
        the 0-5 counts as sharp as a 0-5 model's."""
        split = int(self.class_of([HURDLE_SPLIT])[0]) + 1
        if split <= 0 or split >= probs.shape[-1]:
            return self.decode(probs, "median")
        low, high = probs[:, :split], probs[:, split:]
        return np.where(high.sum(-1) >= gate, split + window_mode(high, HURDLE_WINDOW), part_median(low))

    def expected_counts(self, probs: np.ndarray) -> np.ndarray:
        """The mean count of each row's distribution (the overflow class counted as max_count + 1)."""
        return np.asarray(probs, dtype=np.float64) @ self.count_of(np.arange(self.n_classes))


LABEL_SETTINGS = tuple(f.name for f in fields(LabelSpace))  # min_count, max_count, overflow: as settings and files name them


def part_median(part: np.ndarray) -> np.ndarray:
    """The median class of each row of a part of a distribution, renormalised (index within the part)."""
    cumulative = np.cumsum(part / np.maximum(part.sum(-1, keepdims=True), 1e-12), -1)
    return np.minimum((cumulative < 0.5).sum(-1), part.shape[-1] - 1)


def window_mode(part: np.ndarray, half_width: int) -> np.ndarray:
    """The class of each row whose window of +-half_width classes holds the most probability (index within the part)."""
    padded = np.pad(part, ((0, 0), (half_width, half_width)))
    windows = sum(padded[:, i:i + part.shape[-1]] for i in range(2 * half_width + 1))
    return windows.argmax(-1)


def tail_mean_excess(max_count: int) -> float:
    """Mean of (count - max_count - 1) over bins holding more than max_count: measured on the ABID mirror's 8,053
    records as 3.2 above 5, 4.4 above 10 and 8.7 above 20; this line (1.2 + 0.36 max_count) follows them."""
    return 1.2 + 0.36 * max_count


def tail_ratio(max_count: int) -> float:
    """r of the geometric tail over which a model's overflow class is spread: P(max_count + k | count > max_count) =
    (1 - r) r^(k-1), whose mean excess is `tail_mean_excess(max_count)`."""
    m = tail_mean_excess(max_count)
    return m / (1 + m)


def count_probability(probs: np.ndarray, space: "LabelSpace", counts, ratio: float | None = None) -> np.ndarray:
    """P(count) of each row of class probabilities [N, n_classes] for one count per row, the overflow class spread
    over the counts above max_count as a geometric tail of ratio `ratio` (default: `tail_ratio(max_count)`)."""
    ratio = tail_ratio(space.max_count) if ratio is None else ratio
    counts = np.asarray(counts, dtype=np.int64)
    past = counts - space.max_count
    share = np.where(past >= 1, (1 - ratio) * ratio ** np.maximum(past - 1, 0).astype(float), 1.0)
    return space.probability_of(probs, counts) * share
