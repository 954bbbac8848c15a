"""Counting over the whole range (issue 18): a K-fold run's out-of-fold scores, by decoding, beside the 0-5 model's.

    .venv/bin/python benchmarks/whole_range.py runs/whole-range [--cache runs/whole-range-oof.npz]

Each fold model of the cross-validation run scores its own validation fold (photos it never trained on); the pooled
out-of-fold probabilities are cached, then decoded several ways. Errors are measured against each photo's real count
(a bin of 40 read as "21+" is 19 off). The 0-5 columns are the ones `--preset best` (0-5 only) was chosen on:
36.2% +- 1.8 / RMSE 1.157 over its 5 folds (docs/benchmarks.md, "Accuracy"); a whole-range recipe replaces it only if
it is not below that. The hurdle decoding's gate is chosen here: the smallest one whose pooled 0-5 accuracy is at
least 36.2%, since a lower gate reads more bins above 5.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np

from bintally.evaluation.calibration import out_of_fold_predictions
from bintally.evaluation.metrics import count_metrics
from bintally.labels import LabelSpace
from bintally.models.artifact import read_artifact

BEST_0_5 = 0.362  # --preset best, 5-fold mean accuracy on counts 0-5
GATES = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
SHOWN = ("accuracy_0_5", "rmse_0_5", "within1_0_5", "accuracy", "within1", "mae", "rel_error", "within1_6_up", "mae_6_up")


def oof(run: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, real counts, fold of each photo), computed once."""
    if cache.exists():
        saved = np.load(cache)
        return saved["probs"], saved["count"], saved["fold"]
    probs, photos, _ = out_of_fold_predictions(run, "torch", 64, 2, True)
    fold = fold_of_rows(run, photos)
    np.savez(cache, probs=probs, count=photos["count"].to_numpy(), fold=fold)
    return probs, photos["count"].to_numpy(), fold


def fold_of_rows(run: Path, photos) -> np.ndarray:
    """The fold whose validation set each pooled row came from (the rows come fold by fold, in fold order)."""
    import pandas as pd

    sizes = [int((pd.read_parquet(p, columns=["split"])["split"] == "val").sum())
             for p in sorted((run / "folds").glob("fold-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))]
    if sum(sizes) != len(photos):  # unreadable photos were left out: fall back to one pool
        return np.zeros(len(photos), int)
    return np.repeat(np.arange(1, len(sizes) + 1), sizes)


def scores(space: LabelSpace, counts: np.ndarray, classes: np.ndarray, fold: np.ndarray) -> dict:
    """Pooled metrics, and the mean and sd over folds of each."""
    predicted = space.count_of(classes)
    pooled = count_metrics(counts, predicted, space.max_count)
    per_fold = [count_metrics(counts[fold == k], predicted[fold == k], space.max_count) for k in np.unique(fold)]
    return {k: pooled[k] for k in SHOWN} | {f"{k}_sd": float(np.std([m[k] for m in per_fold], ddof=1)) if len(per_fold) > 1
                                           else float("nan") for k in SHOWN}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/results/whole-range-cv.json")
    args = parser.parse_args()
    space = read_artifact(args.run / "model").labels
    probs, counts, fold = oof(args.run, args.cache or args.run / "oof.npz")
    rows = {"median": scores(space, counts, space.decode(probs, "median"), fold),
            "expected": scores(space, counts, space.decode(probs, "expected"), fold)}
    rows |= {f"hurdle, gate {g}": scores(space, counts, space.decode_hurdle(probs, g), fold) for g in GATES}
    chosen = next((g for g in GATES if rows[f"hurdle, gate {g}"]["accuracy_0_5"] >= BEST_0_5), GATES[-1])
    print(f"{len(counts)} out-of-fold photos, {len(np.unique(fold))} folds; chosen gate {chosen}\n")
    print("| decoding | " + " | ".join(SHOWN) + " |\n|---|" + "---|" * len(SHOWN))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.3f} ± {row[k + '_sd']:.3f}" for k in SHOWN) + " |")
    args.json.write_text(json.dumps({"run": str(args.run), "photos": int(len(counts)), "chosen_gate": chosen,
                                     "best_0_5_kfold": BEST_0_5, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
