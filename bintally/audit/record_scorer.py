"""The record-aware scorer: P(the record is wrong | the photo's count distribution, the record's lines).

Features (`features`, vectorised over bins; each finite for any record, from an empty one to a million units):

from the photo, against the record's total r (the model's distribution over every count: `CountDistribution`)
    log_p_record        log P(count == r), floored at 1e-6. A model with an overflow class ("21+") spreads that
                        class's probability geometrically over the counts above max_count, with a mean excess of
                        `tail_mean_excess(max_count)` items; a model without one (0-5 only) gives records above its
                        classes (or below them) the floor probability 1e-4 instead of 0
    p_below, p_above    P(count < r), P(count > r): which way the photo disagrees
    expected_gap        log(1 + E|count - r|)
    z_gap               |E[count] - r| / sqrt(Var[count] + 1), at most 50
    p_zero              P(count == 0)
    record_beyond       1 when r lies above (or below) the model's own classes: the photo can barely vouch for it
from the record's total
    log_total           log(1 + r)
    record_zero         1 when r == 0 (recorded empty)
from the record's lines (the `lines` variants)
    log_lines           log(1 + number of lines)
    log_max_qty         log(1 + the largest quantity on a line)
    multi_unit_share    the share of lines holding more than one unit
    log_volume          log(1 + total recorded volume in in^3): sum of qty x one unit's volume
    log_weight          log(1 + total recorded weight in lb)
    longest_in          the largest item's longest side, inches (at most 100)
    fill                total recorded volume / the bin's volume (`bin_volume_in3`), at most 20
    largest_overfill    log(1 + qty of the bulkiest line) - log(1 + how many of that item fit in a bin by volume)
    missing_dims        the share of lines without dimensions: their unit volume and longest side are imputed
                        (the training data's medians, stored in the scorer file)
    missing_weight      the share of lines without a weight (imputed the same way)
from the photo and the lines together (the `lines` variant)
    p_fewer_than_lines  P(count < number of lines with units): each such line holds an item, so fewer items in the
                        photo than lines is a phantom line or a bin recorded in place of another
    lines_vs_photo      log(1 + lines) - log(1 + E[count])

Variants: `lines` (photo and lines), `totals` (photo and the record's total: totals-only sources) and
`lines-no-photo` (lines only: the benchmark's measure of what the photo adds). Each variant is one of two kinds, kept
as JSON (never pickle), with the constants above (`bintally/audit/scorers/default.json`; `fit_scorer` writes it):
`logistic` (`LinearScorer`: a logistic regression on standardised features; feature names, means, scales,
coefficients and intercept) or `trees` (`TreeScorer`: a small gradient-boosted tree ensemble; per tree its node
arrays, and the baseline score). Format version 1 files hold logistic variants only. Scoring reads the record and the
photo only; a true quantity is never an input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from bintally.data.records import SkuLine
from bintally.errors import ConfigError, DataError
from bintally.io import read_regular
from bintally.labels import LabelSpace, count_probability, tail_mean_excess, tail_ratio

FORMAT = "bintally-record-scorer"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SCORERS_DIR = Path(__file__).resolve().parent / "scorers"
DEFAULT_SCORER = SCORERS_DIR / "default.json"
MAX_SCORER_BYTES = 5_000_000
MAX_TREES = 1000
MAX_NODES = 1023  # per tree
KINDS = ("logistic", "trees")
P_FLOOR = 1e-6  # the smallest probability a log is taken of
P_OUTSIDE = 1e-4  # P(count == record) for a record the model has no class for (a 0-5 model and a record of 9)
VARIANTS = ("lines", "totals", "lines-no-photo")
PHOTO_FEATURES = ("log_p_record", "p_below", "p_above", "expected_gap", "z_gap", "p_zero", "record_beyond")
TOTAL_FEATURES = ("log_total", "record_zero")
LINE_FEATURES = ("log_lines", "log_max_qty", "multi_unit_share", "log_volume", "log_weight", "longest_in", "fill",
                 "largest_overfill", "missing_dims", "missing_weight")
JOINT_FEATURES = ("p_fewer_than_lines", "lines_vs_photo")
VARIANT_FEATURES = {"lines": PHOTO_FEATURES + TOTAL_FEATURES + LINE_FEATURES + JOINT_FEATURES,
                    "totals": PHOTO_FEATURES + TOTAL_FEATURES,
                    "lines-no-photo": TOTAL_FEATURES + LINE_FEATURES}
ALL_FEATURES = VARIANT_FEATURES["lines"]


@dataclass(frozen=True)
class BinConstants:
    """What the lines are measured against, estimated from the training records (`fit_scorer`); the defaults are the
    ABID mirror's clean records: the 99th percentile of a bin's total recorded volume, and the median unit's volume,
    longest side and weight (for lines that lack them)."""

    bin_volume_in3: float = 2870.0
    unit_volume_in3: float = 60.0
    unit_longest_in: float = 8.2
    unit_weight_lb: float = 0.55

    def to_json(self) -> dict:
        return {k: round(float(v), 4) for k, v in self.__dict__.items()}


# ---------------------------------------------------------------- the photo: a distribution over every count


@dataclass(frozen=True)
class CountDistribution:
    """A model's probabilities as a distribution over every count: its classes, then (with an overflow class) a
    geometric tail above max_count whose mean excess is `tail_mean_excess(max_count)`."""

    space: LabelSpace
    probs: np.ndarray  # [N, n_classes], rows summing to 1

    @classmethod
    def of(cls, space: LabelSpace, probs) -> "CountDistribution":
        probs = np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(0, None)
        total = probs.sum(-1, keepdims=True)
        uniform = np.full_like(probs, 1.0 / max(probs.shape[-1], 1))
        return cls(space, np.where(total > 0, probs / np.where(total > 0, total, 1), uniform))

    @property
    def counts(self) -> np.ndarray:
        """The counts of the explicit classes (the overflow class left out)."""
        return np.arange(self.space.min_count, self.space.max_count + 1, dtype=np.float64)

    @property
    def explicit(self) -> np.ndarray:
        return self.probs[:, :len(self.counts)]

    @property
    def overflow(self) -> np.ndarray:
        return self.probs[:, -1] if self.space.overflow else np.zeros(len(self.probs))

    @property
    def q(self) -> float:
        """The tail's ratio: P(max_count + 1 + j) is proportional to q^j."""
        return tail_ratio(self.space.max_count)

    def mean(self) -> np.ndarray:
        m = tail_mean_excess(self.space.max_count)
        return self.explicit @ self.counts + self.overflow * (self.space.max_count + 1 + m)

    def variance(self) -> np.ndarray:
        m, first = tail_mean_excess(self.space.max_count), self.space.max_count + 1
        tail_square = m * (1 + m) + (first + m) ** 2  # the geometric's variance plus its squared mean
        return np.clip(self.explicit @ self.counts ** 2 + self.overflow * tail_square - self.mean() ** 2, 0, None)

    def p_equal(self, records: np.ndarray) -> np.ndarray:
        """P(count == record) (`labels.count_probability`, with its tail), P_OUTSIDE where the model has no class for it."""
        records = np.asarray(records, dtype=np.int64)
        known = self.space.class_of(records) >= 0
        return np.where(known, count_probability(self.probs, self.space, records), P_OUTSIDE)

    def p_below(self, records: np.ndarray) -> np.ndarray:
        """P(count < record)."""
        r = records.astype(np.float64)
        explicit = (self.explicit * (self.counts[None, :] < r[:, None])).sum(-1)
        excess = np.clip(r - self.space.max_count - 1, 0, None)  # tail counts below r: j < excess
        return np.clip(explicit + self.overflow * (1 - np.exp(excess * math.log(self.q))), 0, 1)

    def expected_gap(self, records: np.ndarray) -> np.ndarray:
        """E|count - record|, the tail's part in closed form: E|j - a| = a - m + 2 m q^a for a geometric j of mean m."""
        r = records.astype(np.float64)
        explicit = (self.explicit * np.abs(self.counts[None, :] - r[:, None])).sum(-1)
        m, a = tail_mean_excess(self.space.max_count), r - self.space.max_count - 1
        tail = np.where(a <= 0, -a + m, a - m + 2 * m * np.exp(np.clip(a, 0, None) * math.log(self.q)))
        return explicit + self.overflow * tail


def photo_features(dist: CountDistribution, records: np.ndarray) -> dict[str, np.ndarray]:
    records = np.asarray(records, dtype=np.float64)
    p_equal, p_below = dist.p_equal(records), dist.p_below(records)
    space = dist.space
    p_zero = dist.explicit[:, 0] if space.min_count == 0 else np.zeros(len(records))
    return {"log_p_record": np.log(np.clip(p_equal, P_FLOOR, 1)),
            "p_below": p_below, "p_above": np.clip(1 - p_below - p_equal, 0, 1),
            "expected_gap": np.log1p(dist.expected_gap(records)),
            "z_gap": np.clip(np.abs(dist.mean() - records) / np.sqrt(dist.variance() + 1), 0, 50),
            "p_zero": p_zero,
            "record_beyond": ((records > space.max_count) & (not space.overflow) | (records < space.min_count)).astype(float)}


# ---------------------------------------------------------------- the record: its lines


@dataclass(frozen=True)
class LineTable:
    """Every line of N records as flat arrays (`bin` says whose), sizes imputed where missing."""

    n: int
    bin: np.ndarray
    qty: np.ndarray
    volume: np.ndarray
    longest: np.ndarray
    weight: np.ndarray
    no_dims: np.ndarray
    no_weight: np.ndarray

    @classmethod
    def of(cls, records: list[tuple[SkuLine, ...]], constants: BinConstants) -> "LineTable":
        lines = [(b, line) for b, record in enumerate(records) for line in record]
        qty = np.array([line.qty for _, line in lines], dtype=np.float64)
        volume = np.array([line.volume_in3 if line.has_dimensions else np.nan for _, line in lines], dtype=np.float64)
        longest = np.array([line.longest_in if line.has_dimensions else np.nan for _, line in lines], dtype=np.float64)
        weight = np.array([np.nan if line.weight_lb is None else line.weight_lb for _, line in lines], dtype=np.float64)
        no_dims, no_weight = ~np.isfinite(volume), ~np.isfinite(weight)
        return cls(len(records), np.array([b for b, _ in lines], dtype=np.int64), qty,
                   np.where(no_dims, constants.unit_volume_in3, np.clip(volume, 0, 1e9)),
                   np.where(no_dims, constants.unit_longest_in, np.clip(longest, 0, 1e4)),
                   np.where(no_weight, constants.unit_weight_lb, np.clip(weight, 0, 1e7)), no_dims, no_weight)

    def per_bin(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.bin, weights=values, minlength=self.n)

    def max_per_bin(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(self.n)
        np.maximum.at(out, self.bin, values)
        return out

    def bulkiest_lines(self) -> np.ndarray:
        """The index of each bin's bulkiest line with units (by unit volume); a bin without one has none."""
        order = np.lexsort((self.volume, self.bin))  # by bin, then by unit volume: the last of each bin is its bulkiest
        held = order[self.qty[order] > 0]
        bins = self.bin[held]
        return held[np.append(bins[1:] != bins[:-1], True)] if len(held) else held

    def bulkiest(self) -> tuple[np.ndarray, np.ndarray]:
        """(its unit volume, its quantity) of each bin's bulkiest line with units; zeros for a bin without one."""
        volume, qty, last = np.zeros(self.n), np.zeros(self.n), self.bulkiest_lines()
        volume[self.bin[last]], qty[self.bin[last]] = self.volume[last], self.qty[last]
        return volume, qty


def fit_count(unit_volume: np.ndarray, constants: BinConstants) -> np.ndarray:
    """How many units of this volume fit in a bin by volume (at least 1)."""
    return np.maximum(1.0, np.floor(constants.bin_volume_in3 / np.maximum(unit_volume, 1e-3)))


def line_features(records: list[tuple[SkuLine, ...]], constants: BinConstants) -> dict[str, np.ndarray]:
    t = LineTable.of(records, constants)
    n_lines = np.bincount(t.bin, minlength=t.n).astype(np.float64)
    per_line = np.maximum(n_lines, 1)
    volume = t.per_bin(t.qty * t.volume)
    bulky_volume, bulky_qty = t.bulkiest()
    return {"log_lines": np.log1p(n_lines), "log_max_qty": np.log1p(t.max_per_bin(t.qty)),
            "multi_unit_share": t.per_bin((t.qty > 1).astype(float)) / per_line,
            "log_volume": np.log1p(volume), "log_weight": np.log1p(t.per_bin(t.qty * t.weight)),
            "longest_in": np.clip(t.max_per_bin(np.where(t.qty > 0, t.longest, 0)), 0, 100),
            "fill": np.clip(volume / constants.bin_volume_in3, 0, 20),
            "largest_overfill": np.log1p(bulky_qty) - np.log1p(np.where(bulky_qty > 0, fit_count(bulky_volume, constants), 0)),
            "missing_dims": t.per_bin(t.no_dims.astype(float)) / per_line,
            "missing_weight": t.per_bin(t.no_weight.astype(float)) / per_line}


def features(dist: CountDistribution | None, records: list[tuple[SkuLine, ...]], totals=None,
             constants: BinConstants = BinConstants()) -> dict[str, np.ndarray]:
    """Every feature of N bins by name (ALL_FEATURES; the photo's only with `dist`). `totals` (default: the sum of
    each record's quantities) is the record total of a totals-only bin, whose `records` entry is ()."""
    totals = np.array([sum(line.qty for line in r) for r in records] if totals is None else totals, dtype=np.float64)
    out = {"log_total": np.log1p(totals), "record_zero": (totals == 0).astype(float)} | line_features(records, constants)
    if dist is not None:
        out |= photo_features(dist, totals)
        held = np.array([sum(1 for line in r if line.qty > 0) for r in records], dtype=np.float64)
        out["p_fewer_than_lines"] = dist.p_below(held)
        out["lines_vs_photo"] = np.log1p(held) - np.log1p(dist.mean())
    return {name: np.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0) for name, value in out.items()}


def feature_matrix(values: dict[str, np.ndarray], names) -> np.ndarray:
    return np.column_stack([values[name] for name in names]) if len(names) else np.zeros((0, 0))


# ---------------------------------------------------------------- the model, as JSON


@dataclass(frozen=True)
class LinearScorer:
    """One variant: standardised features -> logistic regression -> P(record wrong) at the prior it was set to."""

    variant: str
    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def logit(self, values: dict[str, np.ndarray]) -> np.ndarray:
        x = (feature_matrix(values, self.names) - self.mean) / self.scale
        return x @ self.coef + self.intercept

    def probability(self, values: dict[str, np.ndarray]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(self.logit(values), -40, 40)))

    def to_json(self) -> dict:
        return {"kind": "logistic", "features": list(self.names), "mean": rounded(self.mean), "scale": rounded(self.scale),
                "coef": rounded(self.coef), "intercept": round(float(self.intercept), 6)}


TREE_ARRAYS = ("feature", "threshold", "left", "right", "leaf", "value", "missing_left")
ROWS_PER_PASS = 8192


@dataclass(frozen=True)
class TreeScorer:
    """One variant: a gradient-boosted tree ensemble -> P(record wrong) at the prior it was set to. The trees' node
    arrays are padded to [n_trees, n_nodes]; a node goes left when its feature is at most its threshold (a NaN goes
    where `missing_left` says), and the raw score is `baseline` plus the value of the leaf reached in every tree."""

    variant: str
    names: tuple[str, ...]
    baseline: float
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf: np.ndarray
    value: np.ndarray
    missing_left: np.ndarray
    sizes: np.ndarray  # each tree's number of nodes
    depth: int

    @classmethod
    def of_trees(cls, variant: str, names, baseline: float, trees: list[dict]) -> "TreeScorer":
        """From per-tree node arrays (TREE_ARRAYS), each a child after its parent."""
        width = max(len(t["leaf"]) for t in trees)
        pad = {key: np.zeros((len(trees), width), dtype=dtype) for key, dtype in TREE_DTYPES.items()}
        pad["leaf"][:] = True
        for i, tree in enumerate(trees):
            for key in TREE_ARRAYS:
                pad[key][i, :len(tree[key])] = tree[key]
        own = np.broadcast_to(np.arange(width), (len(trees), width))
        for key, still in (("feature", 0), ("left", own), ("right", own)):  # a leaf stays where it is
            pad[key] = np.where(pad["leaf"], still, pad[key])
        sizes = np.array([len(t["leaf"]) for t in trees], dtype=np.int64)
        return cls(variant, tuple(names), float(baseline), **pad, sizes=sizes,
                   depth=tree_depth(pad["left"], pad["right"], pad["leaf"]))

    @classmethod
    def of_model(cls, variant: str, names, model, shift: float = 0.0) -> "TreeScorer":
        """A fitted binary sklearn HistGradientBoostingClassifier on numeric features; `shift` is added to its raw score."""
        if model.n_trees_per_iteration_ != 1:
            raise ValueError("a tree scorer holds a binary classifier")
        trees = []
        for (predictor,) in model._predictors:
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise ValueError("a tree scorer holds numeric splits only")
            threshold = np.where(np.isposinf(nodes["num_threshold"]), np.finfo(np.float64).max, nodes["num_threshold"])
            trees.append({"feature": nodes["feature_idx"], "threshold": threshold, "left": nodes["left"],
                          "right": nodes["right"], "leaf": nodes["is_leaf"].astype(bool), "value": nodes["value"],
                          "missing_left": nodes["missing_go_to_left"].astype(bool)})
        return cls.of_trees(variant, names, float(np.ravel(model._baseline_prediction)[0]) + shift, trees)

    def logit(self, values: dict[str, np.ndarray]) -> np.ndarray:
        x = feature_matrix(values, self.names)
        return np.concatenate([self.raw(x[i:i + ROWS_PER_PASS]) for i in range(0, len(x), ROWS_PER_PASS)] or [np.zeros(0)])

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Every tree over every row at once, one level a pass."""
        trees, rows = np.arange(len(self.leaf))[:, None], np.arange(len(x))[None, :]
        node = np.zeros((len(self.leaf), len(x)), dtype=np.int64)
        for _ in range(self.depth):
            value = x[rows, self.feature[trees, node]]
            go_left = np.where(np.isnan(value), self.missing_left[trees, node], value <= self.threshold[trees, node])
            child = np.where(go_left, self.left[trees, node], self.right[trees, node])
            node = np.where(self.leaf[trees, node], node, child)
        return self.baseline + self.value[trees, node].sum(0)

    def probability(self, values: dict[str, np.ndarray]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(self.logit(values), -40, 40)))

    def to_json(self) -> dict:
        return {"kind": "trees", "features": list(self.names), "baseline": float(self.baseline),
                "trees": [self.tree_json(i) for i in range(len(self.leaf))]}

    def tree_json(self, i: int) -> dict:
        """Tree i's node arrays, its padding left off (floats exact: JSON keeps a float64's repr)."""
        return {key: getattr(self, key)[i, :self.sizes[i]].tolist() for key in TREE_ARRAYS}


TREE_DTYPES = {"feature": np.int64, "threshold": np.float64, "left": np.int64, "right": np.int64, "leaf": bool,
               "value": np.float64, "missing_left": bool}


def tree_depth(left: np.ndarray, right: np.ndarray, leaf: np.ndarray) -> int:
    """The deepest leaf's depth over all trees (children come after their parents)."""
    depth = np.zeros(left.shape, dtype=np.int64)
    for j in range(left.shape[1]):
        inner = np.flatnonzero(~leaf[:, j])
        depth[inner, left[inner, j]] = depth[inner, j] + 1
        depth[inner, right[inner, j]] = depth[inner, j] + 1
    return int(depth.max())


def rounded(values) -> list[float]:
    return [round(float(v), 6) for v in values]


@dataclass(frozen=True)
class RecordScorer:
    """The scorer file: one `LinearScorer` or `TreeScorer` per variant, the bin constants, and how it was fitted."""

    variants: dict[str, LinearScorer | TreeScorer]
    constants: BinConstants = BinConstants()
    prior: float = 0.05  # the share of wrong records the probabilities assume
    training: dict = field(default_factory=dict)

    def score(self, variant: str, dist: CountDistribution | None, records, totals=None) -> np.ndarray:
        if variant not in self.variants:
            raise ConfigError(f"the record scorer has no {variant!r} variant (it has {', '.join(self.variants)})")
        return self.variants[variant].probability(features(dist, records, totals, self.constants))

    def to_json(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "prior": self.prior, "constants": self.constants.to_json(),
                "variants": {name: v.to_json() for name, v in self.variants.items()}, "training": self.training}


def write_scorer(scorer: RecordScorer, path: str | Path) -> Path:
    from bintally.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(scorer.to_json(), indent=1) + "\n")
    return Path(path)


def load_scorer(path: str | Path = DEFAULT_SCORER) -> RecordScorer:
    """A scorer file, checked (size, format, every variant's arrays); DataError naming the file otherwise."""
    path = Path(path)
    try:
        doc = json.loads(read_regular(path, MAX_SCORER_BYTES, "record scorer").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"not a record scorer: not JSON ({e})") from None
    return scorer_of(doc, path)


@lru_cache(maxsize=4)
def cached_scorer(path: str, stamp: float) -> RecordScorer:
    return load_scorer(path)


def default_scorer(path: str | Path = DEFAULT_SCORER) -> RecordScorer:
    """The scorer file, read once per change of the file."""
    path = Path(path)
    try:
        stamp = path.stat().st_mtime
    except OSError as e:
        raise DataError(path, f"cannot read the record scorer ({e.strerror or e})") from None
    return cached_scorer(str(path), stamp)


def scorer_of(doc, path) -> RecordScorer:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(path, f"not a record scorer (no \"format\": \"{FORMAT}\")")
    version = doc.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise DataError(path, f"record scorer format_version {version!r}: this bintally reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    prior = doc.get("prior")
    if not isinstance(prior, (int, float)) or isinstance(prior, bool) or not 0 < prior < 1:
        raise DataError(path, f"prior {prior!r}: give a share of wrong records above 0 and below 1")
    variants = doc.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise DataError(path, "no variants (an object of lines, totals, lines-no-photo)")
    return RecordScorer({name: variant_of(name, v, path, version) for name, v in variants.items()}, constants_of(doc.get("constants"), path),
                        float(prior), doc.get("training") if isinstance(doc.get("training"), dict) else {})


def constants_of(values, path) -> BinConstants:
    defaults = BinConstants().to_json()
    if not isinstance(values, dict) or set(values) != set(defaults):
        raise DataError(path, f"constants: give {', '.join(defaults)}")
    for name, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise DataError(path, f"constants.{name} {value!r}: give a number above 0")
    return BinConstants(**{k: float(v) for k, v in values.items()})


def variant_of(name: str, doc, path, version: int = FORMAT_VERSION) -> LinearScorer | TreeScorer:
    where = f"variant {name!r}"
    if name not in VARIANTS:
        raise DataError(path, f"unknown {where}: use {', '.join(VARIANTS)}")
    if not isinstance(doc, dict):
        raise DataError(path, f"{where} is not an object")
    kind, kinds = doc.get("kind", "logistic"), KINDS if version >= 2 else ("logistic",)
    if kind not in kinds:
        raise DataError(path, f"{where}: kind {kind!r}: format_version {version} has {', '.join(kinds)}")
    names = doc.get("features")
    if not isinstance(names, list) or not names or any(n not in ALL_FEATURES for n in names) or len(set(names)) != len(names):
        raise DataError(path, f"{where}: features must be distinct names from {', '.join(ALL_FEATURES)}")
    if name == "lines-no-photo" and set(names) & set(PHOTO_FEATURES + JOINT_FEATURES):
        raise DataError(path, f"{where} uses the photo's features")
    if kind == "trees":
        return trees_of(name, names, doc, path)
    arrays = {key: numbers(doc.get(key), len(names), f"{where}: {key}", path) for key in ("mean", "scale", "coef")}
    if (arrays["scale"] <= 0).any():
        raise DataError(path, f"{where}: every scale must be above 0")
    intercept = numbers([doc.get("intercept")], 1, f"{where}: intercept", path)[0]
    return LinearScorer(name, tuple(names), arrays["mean"], arrays["scale"], arrays["coef"], float(intercept))


def trees_of(name: str, names: list[str], doc: dict, path) -> TreeScorer:
    where = f"variant {name!r}"
    baseline = numbers([doc.get("baseline")], 1, f"{where}: baseline", path)[0]
    trees = doc.get("trees")
    if not isinstance(trees, list) or not 1 <= len(trees) <= MAX_TREES:
        raise DataError(path, f"{where}: trees must be a list of 1 to {MAX_TREES:,} trees")
    checked = [tree_of(tree, len(names), f"{where}: tree {i}", path) for i, tree in enumerate(trees)]
    return TreeScorer.of_trees(name, names, float(baseline), checked)


def tree_of(tree, n_features: int, where: str, path) -> dict:
    """One tree's node arrays, checked: equal sizes, types, split features in range, every child after its parent."""
    if not isinstance(tree, dict) or set(tree) != set(TREE_ARRAYS):
        raise DataError(path, f"{where}: give an object of {', '.join(TREE_ARRAYS)}")
    n = len(tree["leaf"]) if isinstance(tree["leaf"], list) else 0
    if not 1 <= n <= MAX_NODES:
        raise DataError(path, f"{where}: leaf must list 1 to {MAX_NODES:,} nodes")
    out = {key: numbers(tree[key], n, f"{where}: {key}", path) for key in ("threshold", "value")}
    for key in ("leaf", "missing_left"):
        if not isinstance(tree[key], list) or len(tree[key]) != n or any(not isinstance(v, bool) for v in tree[key]):
            raise DataError(path, f"{where}: {key}: give {n} true/false value(s)")
        out[key] = np.array(tree[key], dtype=bool)
    for key in ("feature", "left", "right"):
        if (not isinstance(tree[key], list) or len(tree[key]) != n
                or any(isinstance(v, bool) or not isinstance(v, int) for v in tree[key])):
            raise DataError(path, f"{where}: {key}: give {n} whole number(s)")
        out[key] = np.array(tree[key], dtype=np.int64)
    inner, index = ~out["leaf"], np.arange(n)
    if ((out["feature"] < 0) | (out["feature"] >= n_features))[inner].any():
        raise DataError(path, f"{where}: a split's feature index is not one of the {n_features} features")
    for key in ("left", "right"):
        if ((out[key] <= index) | (out[key] >= n))[inner].any():
            raise DataError(path, f"{where}: {key}: a split's child must be a later node of the tree (below {n})")
    return out


def numbers(values, n: int, where: str, path) -> np.ndarray:
    if (not isinstance(values, list) or len(values) != n
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values)):
        raise DataError(path, f"{where}: give {n} finite number(s)")
    return np.array(values, dtype=np.float64)
