"""Score a trained run once on its manifest's test split (accuracy, RMSE on counts 0-5 and 1-5).

    .venv/bin/python benchmarks/test_split_metrics.py runs/abid-finetune runs/abid.parquet

Models are selected on the validation split during training; this is the one look at the test split.
"""

from __future__ import annotations

import json
import sys
import time

from bintally.data.manifest import read_manifest
from bintally.evaluation.metrics import count_metrics
from bintally.predict import Predictor


def main(run: str, manifest: str, split: str = "test") -> None:
    df = read_manifest(manifest)
    photos = df[df["split"] == split]
    predictor = Predictor.load(run)
    max_count = len(predictor.classes) - 2
    started = time.time()
    preds = predictor.predict_paths(photos["path"].tolist())
    metrics = count_metrics(photos["label"].to_numpy(dtype=int), [p["label"] for p in preds], max_count)
    metrics["seconds"] = round(time.time() - started, 1)
    print(json.dumps({"run": run, "split": split, **metrics}, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
