"""How long 50 `bintally tune` trials take on cached frozen features, and that a rerun resumes the study.

    .venv/bin/python benchmarks/tune_benchmark.py --data runs/abid.parquet --trials 50 --jobs 2 --resume-trials 10

The feature cache is filled first (and timed apart), since the target is for trials on cached
features. The study lives in a fresh SQLite file under --out; the result is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from bintally.training.engine import prepare_features
from bintally.tuning import TuneConfig, tune
from bintally.tuning.search import trial_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/abid.parquet")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--pruner", default="median")
    parser.add_argument("--resume-trials", type=int, default=10)
    parser.add_argument("--out", default="runs/tune-benchmark")
    args = parser.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)
    config = TuneConfig(data=args.data, study="benchmark", out=args.out, n_trials=args.trials, jobs=args.jobs, pruner=args.pruner)
    started = time.perf_counter()
    prepare_features(trial_config(config, {}, args.data, args.out))
    features_s = time.perf_counter() - started

    started = time.perf_counter()
    first = tune(config)
    tune_s = time.perf_counter() - started

    started = time.perf_counter()
    config.n_trials = args.resume_trials
    second = tune(config)
    resume_s = time.perf_counter() - started

    print(json.dumps({
        "cpu_count": os.cpu_count(), "load_average_1m_after": os.getloadavg()[0], "data": args.data, "jobs": args.jobs,
        "pruner": args.pruner, "feature_cache_s": round(features_s, 1),
        "first": {"trials_requested": args.trials, "trials_in_study": first.trials, "complete": first.complete,
                  "pruned": first.pruned, "wall_s": round(tune_s, 1), "best_val_accuracy_0_5": first.best_value,
                  "best_params": first.best_params},
        "resumed": {"trials_requested": args.resume_trials, "trials_in_study": second.trials, "wall_s": round(resume_s, 1),
                    "best_val_accuracy_0_5": second.best_value},
        "outputs": {k: str(Path(v)) for k, v in second.outputs.items()}, "best_config": second.best_config,
    }, indent=2))


if __name__ == "__main__":
    main()
