"""Accuracy against images/s: one fold model against the K-fold ensemble, on both backends (issue 10).

    .venv/bin/python benchmarks/ensemble_speed.py RUN [--photos 256] [--batch 16]

RUN is a `bintally train --folds K` run. Each model counts the same real photos (decoded and
pre-processed once, outside the timing) through `Counter.predict(...).rows()`, with flip TTA, in one
process with 2 threads; the best of 3 passes is reported. Accuracy figures come from the run's
cv.json (validation) and are added to the table by hand with the test split's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bintally.export.onnx import load_photos
from bintally.inference import Counter
from bintally.models.artifact import read_artifact


def images_per_second(counter: Counter, arrays: np.ndarray, batch: int, passes: int = 3) -> float:
    counter.predict(arrays[:batch]).rows()  # warm-up (and the ONNX export, on first use)
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        for i in range(0, len(arrays), batch):
            counter.predict(arrays[i:i + batch]).rows()
        best = min(best, time.perf_counter() - started)
    return len(arrays) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ensemble_speed.json"))
    options = parser.parse_args()
    manifest = pd.read_parquet(options.run / "folds" / "fold-1.parquet")
    paths = manifest.loc[manifest["split"] == "val", "path"].head(options.photos).tolist()
    rows = []
    arrays, _ = load_photos(paths, read_artifact(options.run).transform)  # the fold models and the ensemble share it
    for name, model in [("one fold model", options.run / "fold-1"), ("ensemble of the folds", options.run)]:
        for backend in ("torch", "onnx"):
            counter = Counter.load(model, backend=backend, threads=2)
            rate = images_per_second(counter, arrays, options.batch)
            rows.append({"model": name, "members": counter.artifact.model.members, "backend": backend, "images_per_s": round(rate, 1)})
            print(rows[-1], flush=True)
    options.out.write_text(json.dumps({"run": str(options.run), "photos": len(paths), "batch": options.batch, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
