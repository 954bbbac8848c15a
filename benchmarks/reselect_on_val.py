"""Re-select a run's saved model on the validation split with the current decoding.

The documented fine-tuning run was trained before the ordinal head decoded by the median; its
best.pt had been chosen by argmax accuracy. This scores best.pt and the final checkpoint on the
validation split (never the test split) and keeps the better one as best.pt.

    .venv/bin/python benchmarks/reselect_on_val.py runs/abid-finetune runs/abid.parquet
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from bintally.data.manifest import read_manifest
from bintally.evaluation.metrics import count_metrics
from bintally.predict import Predictor


def val_metrics(model_file: Path, val) -> dict:
    preds, _ = Predictor.load(model_file).predict_paths(val["path"].tolist())
    return count_metrics(val["label"].to_numpy(dtype=int), [p["label"] for p in preds])


def main(run: str, manifest: str) -> None:
    run = Path(run)
    val = read_manifest(manifest).query("split == 'val'")
    best = torch.load(run / "best.pt", weights_only=False)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    final = dict(best, state_dict=last["model"], metrics={"epoch": last["epoch"]})
    torch.save(final, run / "final.pt")
    scores = {name: val_metrics(run / name, val) for name in ("best.pt", "final.pt")}
    for name, m in scores.items():
        print(name, json.dumps({k: round(v, 4) for k, v in m.items()}))
    key = lambda name: (scores[name]["accuracy_0_5"], -scores[name]["rmse_0_5"])  # noqa: E731
    chosen = max(scores, key=key)
    if chosen == "final.pt":
        shutil.copy(run / "best.pt", run / "best-by-argmax.pt")
        saved = torch.load(run / "final.pt", weights_only=False)
        saved["metrics"] = {f"val_{k}": v for k, v in scores["final.pt"].items()}
        torch.save(saved, run / "best.pt")
    (run / "reselection.json").write_text(json.dumps({"chosen": chosen, "val": scores}, indent=2))
    print("kept", chosen)


if __name__ == "__main__":
    main(*sys.argv[1:3])
