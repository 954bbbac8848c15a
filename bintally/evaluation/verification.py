"""ABID's object quantity verification: "is there quantity q of ASIN X in this bin?", answered from the photo.

Questions: every bin whose metadata lists SKU lines (`BIN_FCSKU_DATA`) gives two per line X of quantity q: a
positive one, (X, q), and a negative one, (X, q') with q' drawn uniformly from 1..max(5, q+3) without q. The
draws of a bin come from a generator seeded with (seed, CRC-32 of the bin's id): the same seed asks a bin the
same questions whichever other photos are scored. Bins without lines (or without metadata) ask none.

Answer: the rest of the record is taken as right, so X holds q' items exactly when the bin holds q' + rest,
rest being the other lines' quantities: P(yes) = P(total == q' + rest) under the model's calibrated count
distribution. The overflow class ("more than N") is spread over N+1, N+2, ... as a geometric tail,
P(N+k) = P(overflow) (1 - r) r^(k-1) with r = `bintally.labels.tail_ratio(N)`, the one tail the audit's scorer uses too
(its mean excess follows the ABID mirror's counts above N).

The answer is yes when P(yes) exceeds a threshold: the one with the best accuracy on the validation split's
questions (of equals, the nearest to 0.5), or 0.5 when there is no validation split to choose on.
Reported: the number of questions and bins, the accuracy at that threshold and the ROC AUC of P(yes).
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from bintally.data.metadata import json_type, load_json
from bintally.data.records import SkuLine, metadata_lines
from bintally.errors import DataError
from bintally.labels import LabelSpace, count_probability

SEED = 0
DEFAULT_THRESHOLD = 0.5
NEGATIVE_SPAN = (5, 3)  # negatives are drawn from 1..max(5, q + 3)
QUESTION_COLUMNS = ["photo", "id", "sku", "asked", "true_qty", "rest", "truth"]


# ---------------------------------------------------------------- the questions


def negative_quantity(qty: int, rng: np.random.Generator) -> int:
    """A quantity other than `qty`, uniform over 1..max(5, qty + 3)."""
    choices = [q for q in range(1, max(NEGATIVE_SPAN[0], qty + NEGATIVE_SPAN[1]) + 1) if q != qty]
    return int(rng.choice(choices))


def bin_rng(seed: int, bin_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(str(bin_id).encode())])


def bin_questions(photo: int, bin_id: str, lines: tuple[SkuLine, ...], seed: int = SEED) -> list[tuple]:
    """The rows (QUESTION_COLUMNS) of one bin: a positive and a negative question per line, in the lines' order."""
    rng, total = bin_rng(seed, bin_id), sum(line.qty for line in lines)
    rows = []
    for line in lines:
        rest = total - line.qty
        rows.append((photo, bin_id, line.sku, line.qty, line.qty, rest, True))
        rows.append((photo, bin_id, line.sku, negative_quantity(line.qty, rng), line.qty, rest, False))
    return rows


def photo_lines(meta_path) -> tuple[SkuLine, ...]:
    """The SKU lines of a photo's metadata file; none when the photo has no metadata (class folders)."""
    if meta_path is None or (isinstance(meta_path, float) and np.isnan(meta_path)) or meta_path == "":
        return ()
    doc = load_json(meta_path, "metadata file")
    if not isinstance(doc, dict):
        raise DataError(meta_path, f"expected a JSON object with BIN_FCSKU_DATA, found {json_type(doc)}")
    return metadata_lines(doc, meta_path)


def verification_questions(photos: pd.DataFrame, seed: int = SEED) -> pd.DataFrame:
    """The questions (QUESTION_COLUMNS; `photo` is the row of `photos`) of every photo whose metadata lists lines."""
    meta_paths = photos["meta_path"] if "meta_path" in photos else [None] * len(photos)
    rows = []
    for photo, (bin_id, meta_path) in enumerate(zip(photos["id"].astype(str), meta_paths)):
        lines = photo_lines(meta_path)
        rows += bin_questions(photo, bin_id, lines, seed) if lines else []
    return pd.DataFrame(rows, columns=QUESTION_COLUMNS)


# ---------------------------------------------------------------- the answers


def answer_probabilities(questions: pd.DataFrame, probs: np.ndarray, space: LabelSpace,
                         ratio: float | None = None) -> np.ndarray:
    """P(yes) of each question: P(the photo's total == asked + rest)."""
    if questions.empty:
        return np.empty(0)
    rows = np.asarray(probs, dtype=np.float64)[questions["photo"].to_numpy(dtype=int)]
    return count_probability(rows, space, questions["asked"] + questions["rest"], ratio)


def best_threshold(p_yes: np.ndarray, truth: np.ndarray) -> float:
    """The threshold (yes when P(yes) > it) with the best accuracy; of equals, the nearest to 0.5."""
    p_yes, truth = np.asarray(p_yes, dtype=float), np.asarray(truth, dtype=bool)
    if not len(p_yes):
        return DEFAULT_THRESHOLD
    candidates = np.unique(np.concatenate([[DEFAULT_THRESHOLD], p_yes]))
    positives, negatives = np.sort(p_yes[truth]), np.sort(p_yes[~truth])
    right = (len(positives) - np.searchsorted(positives, candidates, "right")) + np.searchsorted(negatives, candidates, "right")
    best = np.flatnonzero(right == right.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]])


def verification_metrics(questions: pd.DataFrame, p_yes: np.ndarray, threshold: float, threshold_from: str) -> dict:
    """Questions, bins, accuracy at the threshold and ROC AUC (null when the answers are all yes or all no)."""
    truth = questions["truth"].to_numpy(dtype=bool)
    answered = len(truth) > 0
    return {"questions": int(len(truth)), "positives": int(truth.sum()), "bins": int(questions["photo"].nunique()),
            "accuracy": float(((p_yes > threshold) == truth).mean()) if answered else float("nan"),
            "roc_auc": float(roc_auc_score(truth, p_yes)) if answered and 0 < truth.sum() < len(truth) else float("nan"),
            "threshold": float(threshold), "threshold_from": threshold_from}


def renumber(questions: pd.DataFrame, rows) -> pd.DataFrame:
    """The questions of the photos at positions `rows` (say, the photos that could be read), `photo` now the position
    in `rows`."""
    rows = np.asarray(rows, dtype=int)
    position = pd.Series(np.arange(len(rows)), index=rows)
    kept = questions[questions["photo"].isin(rows)]
    return kept.assign(photo=position.loc[kept["photo"]].to_numpy()).reset_index(drop=True)


def verify_quantity(questions: pd.DataFrame, probs: np.ndarray, space: LabelSpace, threshold: float = DEFAULT_THRESHOLD,
                    threshold_from: str = "default") -> tuple[dict, pd.DataFrame]:
    """(metrics, the questions with their p_yes and answer), `probs` being the class probabilities of the photos
    the questions' `photo` numbers."""
    p_yes = answer_probabilities(questions, probs, space)
    questions = questions.assign(p_yes=p_yes, answer=p_yes > threshold)
    return verification_metrics(questions, p_yes, threshold, threshold_from), questions
