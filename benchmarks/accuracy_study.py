"""The accuracy study (issue 10): each recipe cross-validated with `bintally train --folds K` on the mirror's train+val.

    .venv/bin/python benchmarks/accuracy_study.py --data runs/abid.parquet --folds 3 [--only NAME ...]

Every recipe is one `bintally train` command; a recipe whose RUN/cv.json exists is not run again
(a stopped study goes on where it stopped: `train --resume` is used for a half-done one). Results
go to benchmarks/results/accuracy_cv.json: per recipe, the K-fold mean and standard deviation of
validation accuracy and RMSE on counts 0-5 and 1-5, and the wall time on this machine. The test
split is not touched here; the chosen recipe is scored on it once, separately.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "accuracy_cv.json"
FROZEN = ["--mode", "frozen", "--head", "ordinal", "--batch-size", "64", "--lr", "1e-3", "--weight-decay", "0.05",
          "--dropout", "0.2", "--warmup-epochs", "1"]
RECIPES = {
    # pooled final features (the old frozen fast path) against the stride-16 map with a conv head
    "pooled-0-5": FROZEN + ["--features", "pooled", "--overflow", "exclude", "--max-count", "5", "--epochs", "20"],
    "stride16-0-5": FROZEN + ["--features", "stride16", "--overflow", "exclude", "--max-count", "5", "--epochs", "10"],
    "stride16-0-5-overflow": FROZEN + ["--features", "stride16", "--overflow", "class", "--max-count", "5", "--epochs", "10"],
    "stride16-0-12-overflow": FROZEN + ["--features", "stride16", "--overflow", "class", "--max-count", "12", "--epochs", "10"],
    "stride16-0-5-weights": FROZEN + ["--features", "stride16", "--overflow", "exclude", "--max-count", "5", "--epochs", "10",
                                      "--balance", "weights"],
    "stride16-0-5-lite2": FROZEN + ["--features", "stride16", "--overflow", "exclude", "--max-count", "5", "--epochs", "10",
                                    "--backbone", "efficientnet_lite2"],
    # fine-tuning done in two steps (linear probe, then fine-tune): each fold of stride16-0-5 goes on with its top two
    # stride-16 stages unfrozen, at a low learning rate, on photos with count-preserving augmentation
    "lpft-stride16-0-5": ["--mode", "partial", "--unfreeze", "2", "--features", "stride16", "--head", "ordinal", "--overflow", "exclude",
                          "--max-count", "5", "--epochs", "3", "--batch-size", "32", "--lr", "2e-4", "--backbone-lr-scale", "0.5",
                          "--warmup-epochs", "0.3", "--weight-decay", "0.05", "--dropout", "0.2", "--workers", "1",
                          "--init", "runs/cv/stride16-0-5"],
    # fine-tuning the backbone's last stride-16 stages under the spatial head (photos, not cached maps)
    "partial2-stride16-0-5": ["--mode", "partial", "--unfreeze", "2", "--features", "stride16", "--head", "ordinal",
                              "--overflow", "exclude", "--max-count", "5", "--epochs", "3", "--batch-size", "32", "--lr", "1e-3",
                              "--backbone-lr-scale", "0.1", "--workers", "1"],
}


def run_recipe(name: str, args: list[str], data: str, folds: int, out_root: Path) -> dict:
    run = out_root / name
    if not (run / "cv.json").exists():
        command = [sys.executable, "-m", "bintally", "train", "--data", data, "--folds", str(folds), "--no-progress"]
        command += ["--resume", str(run)] if (run / "config.json").exists() else ["--out", str(run), *args]
        started = time.time()
        subprocess.run(command, check=True)
        (run / "wall_time_s.txt").write_text(f"{time.time() - started:.0f}\n")
    cv = json.loads((run / "cv.json").read_text())
    if (run / "wall_time_s.txt").exists():
        wall = (run / "wall_time_s.txt").read_text().strip()
    else:  # the command was run outside this script: its folds' own training times
        wall = str(sum(f["wall_time_s"] for f in cv["folds"]))
    return {"recipe": name, "command": "bintally train --data DATA --folds K " + " ".join(args), "k": cv["k"],
            "wall_time_s": float(wall) if wall else None, "summary": cv["summary"],
            "folds": [{k: v for k, v in f.items() if k.startswith(("fold", "val_accuracy", "val_rmse", "val_n", "wall"))}
                      for f in cv["folds"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/abid.parquet")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--out", default="runs/cv")
    parser.add_argument("--only", nargs="*", choices=list(RECIPES))
    options = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in options.only or list(RECIPES):
        results[name] = run_recipe(name, RECIPES[name], options.data, options.folds, Path(options.out))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2))
        s = results[name]["summary"]
        print(f"{name}: 0-5 accuracy {s['val_accuracy_0_5']['mean']:.3f} ± {s['val_accuracy_0_5']['std']:.3f}, "
              f"RMSE {s['val_rmse_0_5']['mean']:.3f} ± {s['val_rmse_0_5']['std']:.3f}", flush=True)


if __name__ == "__main__":
    main()
