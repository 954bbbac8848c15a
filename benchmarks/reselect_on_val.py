"""Re-select a run's saved model on the validation split with the current decoding.

The documented fine-tuning run was trained before the ordinal head decoded by the median; its
saved model had been chosen by argmax accuracy. This scores the saved model (RUN/model) and the
final checkpoint on the validation split (never the test split) and keeps the better one as RUN/model.

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
from bintally.inference import Counter
from bintally.models.artifact import RUN_SUBDIR, load_model, read_artifact, save_model


def val_metrics(model_dir: Path, val) -> dict:
    counter = Counter.load(model_dir)
    preds, _ = counter.count_paths(val["path"].tolist())
    labels = counter.labels
    return count_metrics(labels.count_of(val["label"].to_numpy(dtype=int)), [p["count"] for p in preds], labels.max_count)


def main(run: str, manifest: str) -> None:
    run = Path(run)
    val = read_manifest(manifest).query("split == 'val'")
    best = read_artifact(run / RUN_SUBDIR)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    model = load_model(best)
    model.load_state_dict(last["model"])
    save_model(run / "final-model", model, best.transform, best.tta, best.train_config, {"epoch": last["epoch"]})
    scores = {name: val_metrics(run / name, val) for name in (RUN_SUBDIR, "final-model")}
    for name, m in scores.items():
        print(name, json.dumps({k: round(v, 4) for k, v in m.items()}))
    key = lambda name: (scores[name]["accuracy_0_5"], -scores[name]["rmse_0_5"])  # noqa: E731
    chosen = max(scores, key=key)
    if chosen == "final-model":
        shutil.copytree(run / RUN_SUBDIR, run / "model-by-argmax", dirs_exist_ok=True)
        save_model(run / RUN_SUBDIR, model, best.transform, best.tta, best.train_config,
                   {f"val_{k}": v for k, v in scores["final-model"].items()})
    (run / "reselection.json").write_text(json.dumps({"chosen": chosen, "val": scores}, indent=2))
    print("kept", chosen)


if __name__ == "__main__":
    main(*sys.argv[1:3])
