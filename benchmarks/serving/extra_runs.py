"""Follow-up measurements behind the findings of benchmarks/serving_benchmark.py (same harness, same photos).

    .venv/bin/python benchmarks/serving/extra_runs.py tta defaults seed-threading rss-steps

Run after benchmarks/serving_benchmark.py (it leaves the exports and the photo list in /tmp/bintally-bench).
Results: benchmarks/results/serving-extra.json (each experiment's key replaced when it is run again).

tta             the same weights with test-time augmentation off (model.json "tta": false, exported with
                `bintally export`), served at concurrency 8 and 32, fp32 and int8
defaults        --max-batch-size 32/16 with --max-wait-ms 2/5 at concurrency 1, 8 and 32, fp32 and int8
seed-threading  the seed-style server as ThreadingHTTPServer instead of one request at a time
rss-steps       the server's RSS after every 500 requests at concurrency 32, from start to 4,000 requests
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import serving_benchmark as b  # noqa: E402

OUT = b.ROOT / "benchmarks" / "results" / "serving-extra.json"
PHOTOS = b.WORK / "photos.txt"
CFG = dict(b.FULL)
KEYS = ("images_per_s", "p50_ms", "p90_ms", "p99_ms", "server_cpu_ms_per_image", "server_cpu_cores")


def row(r: dict) -> dict:
    return {k: r[k] for k in KEYS} | {"concurrency": r["concurrency"], "requests": r["requests"], "errors": r["errors"],
                                      "profile": r.get("profile")}


def tta_off_exports() -> dict:
    source = Path(json.loads(b.RESULTS.read_text())["model"]["path"])  # the model serving_benchmark.py served
    model = b.WORK / "model-notta"
    if b.model_version(model) != b.model_version(source):
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(source, model, dirs_exist_ok=True)
        meta = json.loads((model / "model.json").read_text())
        meta["tta"] = False
        (model / "model.json").write_text(json.dumps(meta, indent=1))
    return {"fp32": b.export(model, b.WORK / "export-notta-fp32", None, False),
            "int8": b.export(model, b.WORK / "export-notta-int8", "int8", False)}


def tta() -> dict:
    exports = tta_off_exports()
    out = {"exports": exports, "runs": []}
    for key, e in exports.items():
        with b.bintally_server(Path(e["dir"]), 18720, name=f"notta-{key}") as s:
            for c in (8, 32):
                r = b.measure(s, c, PHOTOS, CFG, "/v1/count", "raw", '"count"', 15, metrics=True)
                out["runs"].append({"export": key, "tta": False} | row(r))
                b.log("tta off", key, c, r["images_per_s"], r["p99_ms"])
    return out


def defaults() -> dict:
    out = []
    for key in ("int8", "fp32"):
        for batch, wait in [(32, 2), (16, 2), (16, 5)]:
            with b.bintally_server(b.WORK / f"export-{key}", 18750, batch, wait, name="defaults") as s:
                for c in (1, 8, 32):
                    r = b.measure(s, c, PHOTOS, CFG, "/v1/count", "raw", '"count"', 10, metrics=True)
                    out.append({"export": key, "max_batch_size": batch, "max_wait_ms": wait} | row(r))
                    b.log("defaults", key, batch, wait, c, r["images_per_s"], r["p50_ms"], r["p99_ms"])
    return {"runs": out}


def seed_threading() -> dict:
    out = []
    with b.seed_server(18730, "threading") as s:
        for c in (1, 8, 32):
            r = b.measure(s, c, PHOTOS, CFG, "/", "raw", '"logits"', 15)
            out.append(row(r))
            b.log("seed threading", c, r["images_per_s"], r["p99_ms"])
    return {"runs": out}


def rss_steps() -> dict:
    steps = []
    with b.bintally_server(b.WORK / "export-fp32", 18700, name="rss") as s:
        steps.append((0, round(b.rss_bytes([s.proc.pid]) / 2**20, 1)))
        for i in range(8):
            b.wrk(s.url("/v1/count"), 32, PHOTOS, 600, "raw", '"count"', stop_after=500, server=s)
            steps.append(((i + 1) * 500, round(b.rss_bytes([s.proc.pid]) / 2**20, 1)))
            b.log("rss", steps[-1])
    return {"requests_rss_mb": steps}


def main() -> None:
    experiments = {"tta": tta, "defaults": defaults, "seed-threading": seed_threading, "rss-steps": rss_steps}
    chosen = sys.argv[1:] or list(experiments)
    unknown = set(chosen) - set(experiments)
    if unknown:
        sys.exit(f"unknown experiment(s) {sorted(unknown)}: choose from {sorted(experiments)}")
    if not PHOTOS.is_file():
        sys.exit("run benchmarks/serving_benchmark.py first (it writes the photo list and the exports)")
    os.environ.update(b.TUNED_MALLOC)
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for name in chosen:
        results[name] = experiments[name]() | {"machine": b.machine(), "load_average_end": b.load_average()}
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items()}, indent=1)[:4000])


if __name__ == "__main__":
    main()
