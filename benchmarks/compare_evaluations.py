"""A Markdown table of `bintally evaluate --json` results, one row per file, with 95% bootstrap intervals.

    .venv/bin/python benchmarks/compare_evaluations.py runs/eval/*/metrics.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [("accuracy_0_5", "acc 0-5", True), ("rmse_0_5", "RMSE 0-5", False), ("accuracy_1_5", "acc 1-5", True),
           ("rmse_1_5", "RMSE 1-5", False), ("within1_0_5", "within ±1, 0-5", True), ("accuracy", "acc, all", True),
           ("ece", "ECE, all", False)]


def cell(metrics: dict, key: str, percent: bool) -> str:
    def fmt(v):
        return f"{100 * v:.1f}%" if percent else f"{v:.3f}"

    interval = metrics.get("ci95", {}).get(key)
    return fmt(metrics[key]) + (f" [{fmt(interval[0])}, {fmt(interval[1])}]" if interval else "")


def main(paths: list[str]) -> None:
    print("| model | n (0-5) | " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for path in paths:
        m = json.loads(Path(path).read_text())
        name = m.get("info", {}).get("model", path)
        print(f"| `{name}` | {m['n_0_5']} | " + " | ".join(cell(m, key, pct) for key, _, pct in COLUMNS) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
