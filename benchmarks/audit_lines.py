"""The audit on real bins: SKU lines, the record-aware scorer and the whole count range (issue 18).

    .venv/bin/python benchmarks/audit_recall.py --lines [--model runs/whole-range] [--data runs/abid.parquet]
        [--seeds 20] [--cache runs/audit-recall] [--speed] [--json benchmarks/results/audit-lines.json]

1. The model's probabilities on every photo of the test split (every count), computed once per model version and
   cached in CACHE/lines-<version>.npz, then scaled at the temperature stored in the model (`bintally calibrate`).
   The truth: each test photo's record lines (its metadata's BIN_FCSKU_DATA), which add up to its count.
2. For each (mix, pi) of CASES and each seed, `corrupt_records(truth, pi, mix, seed)` (bintally/audit/simulate.py);
   every ranker orders the bins and the top 10% and 20% are the recount budget, chosen by `select_tasks` (as `bintally
   audit run` does) after a seeded shuffle, so that ties fall at random. Two sources see the same corrupted records:
   a line-aware one (each record with its lines) and a totals-only one (each record reduced to its total). Rankers:
   random; the largest record first; `mismatch` (1 - p_record) and `distance` (E|count - record|), which read the
   total only; the record-aware scorer as `auto` runs it (`bintally.audit.scoring.record_scores`) on the line-aware
   source (its `lines` variant) and on the totals-only source (its `totals` variant); and its `lines-no-photo` variant
   (the record's lines alone: what the photo adds). Metrics: recall, precision and lift at 10% and 20%, ROC AUC and
   PR AUC, mean and standard deviation over the seeds; recall@10% per error type, pooled over the seeds.
   Populations: all test bins; the test bins whose true count is 0-5 (corrupted among themselves).
3. --speed: bins per second of `bintally audit run` on the bundled sample bucket (1,132 bins), `--score mismatch`
   against `--score auto`, same model, each run in a fresh SQLite store, best of 2, alternating; the ONNX export is
   made once before the timing.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from bintally.audit.record_scorer import CountDistribution, RecordScorer, default_scorer
from bintally.audit.run import select_tasks
from bintally.audit.scoring import expected_distance, record_scores
from bintally.audit.simulate import ERRORS, Corruption, corrupt_records
from bintally.labels import LabelSpace

REPO = Path(__file__).resolve().parents[1]
RATES = (0.02, 0.05, 0.10)
BUDGETS = (0.10, 0.20)
MIXES = ("default", "shifted")  # `shifted` is never fitted on: the robustness check
CASES = tuple(("default", rate) for rate in RATES) + (("shifted", 0.05),)
LINE_AWARE, TOTALS_ONLY, EITHER = "line-aware", "totals-only", "either (reads the total only)"
RANKERS = {  # name: (label, the source it reads)
    "random": ("random", EITHER),
    "largest_record": ("largest record first", EITHER),
    "mismatch": ("`mismatch`: 1 - p_record", EITHER),
    "distance": ("`distance`: E\\|count - record\\|", EITHER),
    "auto_lines": ("**`auto`**: record-aware scorer, `lines` variant", LINE_AWARE),
    "auto_totals": ("**`auto`** on a totals-only source: `totals` variant", TOTALS_ONLY),
    "lines_no_photo": ("`lines-no-photo` (the photo left out)", LINE_AWARE),
}
PAIRS = (("auto_lines", "mismatch"), ("auto_totals", "mismatch"), ("auto_lines", "auto_totals"), ("auto_lines", "lines_no_photo"))
METRICS = ("recall_at_10", "recall_at_20", "precision_at_10", "precision_at_20", "lift_at_10", "lift_at_20", "roc_auc", "pr_auc")


# ---------------------------------------------------------------- probabilities and truth


def test_arrays(model: str, data: str, cache: str, backend: str, batch_size: int, workers: int) -> dict:
    """The model's raw (T = 1) probabilities on the test split with each photo's sha256, count and metadata path,
    cached per model version."""
    from bintally.models.artifact import read_artifact

    version = read_artifact(model).version
    path = Path(cache) / f"lines-{version}.npz"
    if path.is_file():
        print(f"cached test probabilities {path}", flush=True)
        return dict(np.load(path, allow_pickle=False)) | {"cache": str(path), "from_cache": True}
    from bintally.evaluation.calibration import split_predictions
    from bintally.inference import Counter

    started = time.perf_counter()
    counter = Counter.load(model, backend, calibrated=False)
    raw, photos, _ = split_predictions(counter, data, "test", batch_size, workers, progress=False)
    out = {"version": np.array(version), "raw": raw.astype(np.float64), "sha": photos["sha256"].to_numpy(dtype=str),
           "count": photos["count"].to_numpy(dtype=int), "meta_path": photos["meta_path"].to_numpy(dtype=str),
           "seconds": np.array(time.perf_counter() - started)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    print(f"predicted {len(raw)} test photos in {float(out['seconds']):.0f} s: {path}", flush=True)
    return out | {"cache": str(path), "from_cache": False}


def truth_lines(meta_paths, counts) -> list[tuple]:
    """Each photo's record lines from its metadata; they must add up to its count (ABID's do)."""
    from bintally.data.metadata import load_json
    from bintally.data.records import metadata_lines

    truth = []
    for meta, count in zip(meta_paths, counts):
        lines = metadata_lines(load_json(str(meta), "metadata file"), str(meta))
        if sum(line.qty for line in lines) != int(count):
            raise SystemExit(f"{meta}: its lines add up to {sum(line.qty for line in lines)}, its count is {count}")
        truth.append(lines)
    return truth


# ---------------------------------------------------------------- populations, rankers, metrics


@dataclass
class Population:
    name: str
    description: str
    index: int  # part of every seed's shuffle seed
    truth: list[tuple]
    dist: CountDistribution


def populations(space: LabelSpace, probs: np.ndarray, truth: list[tuple]) -> list[Population]:
    counts = np.array([sum(line.qty for line in r) for r in truth])
    small = np.flatnonzero(counts <= 5)
    return [Population("all", f"all {len(truth)} test bins", 0, truth, CountDistribution.of(space, probs)),
            Population("0-5", f"the {len(small)} test bins with true count 0-5", 1, [truth[i] for i in small],
                       CountDistribution.of(space, probs[small]))]


def ranker_scores(dist: CountDistribution, made: Corruption, scorer: RecordScorer, random_scores: np.ndarray) -> dict:
    """Each ranker's scores of the corrupted records (higher: more likely wrong)."""
    totals = made.totals()
    space, probs = dist.space, dist.probs
    return {"random": random_scores, "largest_record": totals.astype(float),
            "mismatch": 1.0 - space.probability_of(probs, totals),
            "distance": expected_distance(space, probs, totals),
            "auto_lines": record_scores(scorer, dist, made.records, totals),
            "auto_totals": record_scores(scorer, dist, [()] * len(totals), totals),
            "lines_no_photo": scorer.score("lines-no-photo", None, made.records, totals)}


def ranking_metrics(scores: np.ndarray, made: Corruption, perm: np.ndarray, rng: np.random.Generator) -> dict:
    """Budget metrics of the top share chosen by `select_tasks` (bins in shuffled order), AUCs, and the errors caught
    at 10% by type."""
    wrong, n = made.corrupted, len(scores)
    out = {"roc_auc": float(roc_auc_score(wrong, scores)), "pr_auc": float(average_precision_score(wrong, scores))}
    for budget in BUDGETS:
        chosen = perm[select_tasks(scores[perm], budget, None, 0.0, rng)[0]]
        caught, tag = int(wrong[chosen].sum()), round(budget * 100)
        out[f"recall_at_{tag}"] = caught / wrong.sum()
        out[f"precision_at_{tag}"] = caught / len(chosen)
        out[f"lift_at_{tag}"] = out[f"recall_at_{tag}"] / (len(chosen) / n)
        if budget == 0.10:
            out["caught"] = {kind: int((made.errors[chosen] == kind).sum()) for kind in ERRORS}
    out["errors"] = {kind: int((made.errors == kind).sum()) for kind in ERRORS}
    return out


def one_seed(pop: Population, mix: str, rate: float, seed: int, scorer: RecordScorer) -> dict:
    made = corrupt_records(pop.truth, rate, mix, seed)
    rng = np.random.default_rng([seed, round(rate * 1000), pop.index, MIXES.index(mix)])
    perm, random_scores = rng.permutation(len(pop.truth)), rng.random(len(pop.truth))
    scores = ranker_scores(pop.dist, made, scorer, random_scores)
    return {name: ranking_metrics(s, made, perm, rng) for name, s in scores.items()}


def summarise(per_seed: list[dict]) -> dict:
    """Per ranker: mean and sd over the seeds of each metric, and recall@10% per error type pooled over the seeds."""
    out = {}
    for name in per_seed[0]:
        runs = [seed[name] for seed in per_seed]
        metrics = {m: {"mean": round(float(np.mean([r[m] for r in runs])), 4), "sd": round(float(np.std([r[m] for r in runs])), 4)}
                   for m in METRICS}
        by_type = {}
        for kind in ERRORS:
            caught, errors = sum(r["caught"][kind] for r in runs), sum(r["errors"][kind] for r in runs)
            by_type[kind] = {"caught": caught, "errors": errors, "recall_at_10": round(caught / errors, 4) if errors else None}
        out[name] = metrics | {"recall_at_10_by_type": by_type}
    return out


def paired(per_seed: list[dict]) -> dict:
    """Recall@10% differences of two rankers on the same corrupted records, seed by seed: mean, sd, seeds won."""
    out = {}
    for a, b in PAIRS:
        diff = np.array([seed[a]["recall_at_10"] - seed[b]["recall_at_10"] for seed in per_seed])
        out[f"{a} - {b}"] = {"mean": round(float(diff.mean()), 4), "sd": round(float(diff.std()), 4),
                             "seeds_above_0": int((diff > 0).sum()), "seeds_below_0": int((diff < 0).sum()), "seeds": len(diff)}
    return out


def simulate(pops: list[Population], scorer: RecordScorer, seeds: int) -> dict:
    results = {}
    for pop in pops:
        results[pop.name] = {"description": pop.description, "bins": len(pop.truth), "cases": {}}
        for mix, rate in CASES:
            if round(rate * len(pop.truth)) == 0:
                raise SystemExit(f"{pop.description}: too few bins for any error at pi = {rate}")
            per_seed = [one_seed(pop, mix, rate, seed, scorer) for seed in range(seeds)]
            entry = {"mix": mix, "rate": rate, "errors_per_seed": int(round(rate * len(pop.truth)))}
            results[pop.name]["cases"][case_key(mix, rate)] = entry | {"rankers": summarise(per_seed), "paired_recall_at_10": paired(per_seed)}
            print(f"{pop.name}: {mix} pi={rate:.2f} done", flush=True)
    return results


def case_key(mix: str, rate: float) -> str:
    return f"{mix}@{rate:.2f}"


# ---------------------------------------------------------------- the audit's own speed


def audit_speed(model: str, sample: str, repeats: int = 2) -> dict:
    """Bins per second of `bintally audit run` with --score mismatch and --score auto, each in a fresh SQLite store,
    alternating, best of `repeats`."""
    from bintally.inference.onnx import cached_onnx
    from bintally.models.artifact import read_artifact

    cached_onnx(read_artifact(model))  # the one-off export, outside the timing
    seconds, bins = {"mismatch": [], "auto": []}, {}
    for _ in range(repeats):
        for score in seconds:
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "bintally", "audit", "run", "--model", model, "--data", sample,
                                       "--score", score, "--db", f"{tmp}/audit.db", "--no-progress", "--json"],
                                      check=True, capture_output=True, text=True, cwd=REPO,
                                      env=os.environ | {"PYTHONPATH": str(REPO)})
                seconds[score].append(time.perf_counter() - started)
                bins[score] = json.loads(done.stdout)["scored"]
            print(f"audit run --score {score}: {bins[score]} bins in {seconds[score][-1]:.1f} s", flush=True)
    out = {score: {"bins": bins[score], "seconds": [round(s, 2) for s in runs], "best_seconds": round(min(runs), 2),
                   "bins_per_second": round(bins[score] / min(runs), 2)} for score, runs in seconds.items()}
    out["auto_over_mismatch_time"] = round(min(seconds["auto"]) / min(seconds["mismatch"]), 4)
    return out | {"model": model, "data": sample, "repeats": repeats, "backend": "onnx (the audit run default)"}


def scoring_speed(space: LabelSpace, raw: np.ndarray, temperature: float, truth: list[tuple], repeats: int = 5) -> dict:
    """Seconds of `score_bins` alone (no photos, no store) on the test bins' true records, per --score, best of
    `repeats`: what the ranker itself costs."""
    from bintally.audit.scoring import score_bins
    from bintally.audit.snapshots import SnapshotIn
    from bintally.inference.prediction import Prediction

    prediction = Prediction.of(space, raw, "argmax", temperature)
    snapshots = [SnapshotIn(f"bin-{i}", f"bin-{i}.jpg", sum(line.qty for line in r), lines=r) for i, r in enumerate(truth)]
    out = {}
    for score in ("mismatch", "auto"):
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            score_bins(prediction, snapshots, score)
            runs.append(time.perf_counter() - started)
        out[score] = {"bins": len(snapshots), "best_seconds": round(min(runs), 4), "bins_per_second": round(len(snapshots) / min(runs))}
    return out


# ---------------------------------------------------------------- markdown


def pct(value: dict) -> str:
    return f"{100 * value['mean']:.1f}% ± {100 * value['sd']:.1f}"


def auc(value: dict) -> str:
    return f"{value['mean']:.3f} ± {value['sd']:.3f}"


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main_table(results: dict, case: str) -> list[str]:
    """Every ranker on both populations: recall@10/20, precision@10, lift@10, ROC AUC, PR AUC."""
    lines = [row("bins", "ranker", "source", "recall@10%", "recall@20%", "precision@10%", "lift@10%", "ROC AUC", "PR AUC"),
             row(*["---"] * 9)]
    for pop, entry in results.items():
        for name, m in entry["cases"][case]["rankers"].items():
            label, source = RANKERS[name]
            lines.append(row(f"{pop} ({entry['bins']})", label, source, pct(m["recall_at_10"]), pct(m["recall_at_20"]),
                             pct(m["precision_at_10"]), f"{m['lift_at_10']['mean']:.2f}x", auc(m["roc_auc"]), auc(m["pr_auc"])))
    return lines


def compact_table(results: dict, cases: list[str]) -> list[str]:
    pops = list(results)
    head = ["case", "ranker"] + [f"{p}: {c}" for p in pops for c in ("recall@10%", "recall@20%", "ROC AUC", "PR AUC")]
    lines = [row(*head), row(*["---"] * len(head))]
    for case in cases:
        for name in RANKERS:
            cells = []
            for p in pops:
                m = results[p]["cases"][case]["rankers"][name]
                cells += [pct(m["recall_at_10"]), f"{100 * m['recall_at_20']['mean']:.1f}%", f"{m['roc_auc']['mean']:.3f}",
                          f"{m['pr_auc']['mean']:.3f}"]
            lines.append(row(case.replace("@", " π = ").replace("0.", "."), RANKERS[name][0], *cells))
    return lines


def type_table(results: dict, case: str, rankers=("auto_lines", "auto_totals", "mismatch", "distance", "random")) -> list[str]:
    """Recall@10% per error type, pooled over the seeds: caught of corrupted."""
    lines = []
    for entry in results.values():
        by = entry["cases"][case]["rankers"]
        errors = {k: by["random"]["recall_at_10_by_type"][k]["errors"] for k in ERRORS}
        head = ["ranker"] + [f"`{k}` ({errors[k]})" for k in ERRORS]
        lines += [f"{entry['description']}:", "", row(*head), row(*["---"] * len(head))]
        for name in rankers:
            t = by[name]["recall_at_10_by_type"]
            lines.append(row(RANKERS[name][0], *(f"{100 * t[k]['recall_at_10']:.1f}% ({t[k]['caught']})" if t[k]["errors"] else "—"
                                                 for k in ERRORS)))
        lines.append("")
    return lines


def paired_table(results: dict, cases=("default@0.05", "shifted@0.05")) -> list[str]:
    head = ["recall@10% difference, same records"] + [f"{p}: {c.replace('@', ' π = ')}" for c in cases for p in results]
    lines = [row(*head), row(*["---"] * len(head))]
    for a, b in PAIRS:
        cells = []
        for case in cases:
            for pop in results:
                d = results[pop]["cases"][case]["paired_recall_at_10"][f"{a} - {b}"]
                cells.append(f"{100 * d['mean']:+.1f} ± {100 * d['sd']:.1f} ({d['seeds_above_0']} up, {d['seeds_below_0']} down)")
        lines.append(row(f"{RANKERS[a][0]} − {RANKERS[b][0]}", *cells))
    return lines


def speed_table(speed: dict) -> list[str]:
    lines = [row("`--score`", "bins", "wall seconds (each run)", "best", "bins per second"), row(*["---"] * 5)]
    for score in ("mismatch", "auto"):
        s = speed[score]
        lines.append(row(score, s["bins"], ", ".join(f"{x:.1f}" for x in s["seconds"]), f"{s['best_seconds']:.1f}", f"{s['bins_per_second']:.1f}"))
    ratio = speed["auto_over_mismatch_time"]
    if "score_bins_only" in speed:
        alone = speed["score_bins_only"]
        lines.append(f"\n`score_bins` alone (no photos, no store) on {alone['auto']['bins']} bins: mismatch "
                     f"{1000 * alone['mismatch']['best_seconds']:.0f} ms, auto {1000 * alone['auto']['best_seconds']:.0f} ms.")
    lines.append(f"\n`auto` takes {ratio:.3f}x the time of `mismatch` ({100 * (ratio - 1):+.1f}%; target: at most +10%).")
    return lines


TARGETS = (("all", "auto_lines", "all bins, line-aware (`auto`, `lines`)", 0.40, 0.60),
           ("all", "auto_totals", "all bins, totals-only (`auto`, `totals`)", 0.30, 0.40),
           ("0-5", "auto_lines", "true count 0-5, line-aware", 0.50, 0.70))


def target_table(results: dict, case: str = "default@0.05") -> list[str]:
    lines = [row("recall@10% at π = 5%", "measured", "target", "stretch", "verdict"), row(*["---"] * 5)]
    for pop, name, label, target, stretch in TARGETS:
        got = results[pop]["cases"][case]["rankers"][name]["recall_at_10"]["mean"]
        verdict = (f"met by {100 * (got - target):.1f} points" if got >= target else f"**missed by {100 * (target - got):.1f} points**")
        verdict += f"; stretch {'met' if got >= stretch else f'missed by {100 * (stretch - got):.1f} points'}"
        lines.append(row(label, pct(results[pop]["cases"][case]["rankers"][name]["recall_at_10"]), f"{target:.0%}", f"{stretch:.0%}", verdict))
    return lines


def markdown(report: dict) -> str:
    results = report["results"]
    parts = ["#### π = 5%, `default` mix", "", *main_table(results, "default@0.05"), "",
             "#### π = 2% and π = 10%", "", *compact_table(results, ["default@0.02", "default@0.10"]), "",
             "#### The `shifted` mix at π = 5% (never fitted on)", "", *compact_table(results, ["shifted@0.05"]), "",
             "#### Paired differences (points of recall@10%, seed by seed on the same records; seeds where the first is ahead, behind)", "",
             *paired_table(results), "",
             "#### Recall@10% by error type (π = 5%, `default`; pooled over the seeds: caught, corrupted in the header)", "",
             *type_table(results, "default@0.05"), "#### Targets", "", *target_table(results)]
    if report.get("speed"):
        parts += ["", "#### Speed", "", *speed_table(report["speed"])]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- main


def model_info(model: str, arrays: dict, scorer_path: str, scorer: RecordScorer) -> dict:
    from bintally.models.artifact import read_artifact

    artifact = read_artifact(model)
    fitted_for = scorer.training.get("model_version")
    if fitted_for != artifact.version:
        print(f"warning: the scorer was fitted for model version {fitted_for}, this model is {artifact.version}", flush=True)
    return {"path": model, "version": artifact.version, "classes": artifact.labels.names, "decoding": artifact.decoding,
            "members": artifact.model.members, "temperature": artifact.temperature, "calibration": artifact.calibration,
            "test_photos": int(len(arrays["count"])), "prediction_seconds": round(float(arrays["seconds"]), 1),
            "probabilities": f"read from {arrays['cache']}" if arrays["from_cache"] else f"computed in this run, cached in {arrays['cache']}",
            "scorer": {"path": scorer_path, "fitted_for_model_version": fitted_for, "fitted": scorer.training.get("fitted"),
                       "prior": scorer.prior, "same_model": fitted_for == artifact.version}}


def run(args) -> dict:
    """The whole benchmark (argparse namespace from benchmarks/audit_recall.py); writes args.json, prints markdown."""
    from bintally.audit.record_scorer import load_scorer
    from bintally.inference.temperature import apply_temperature
    from bintally.models.artifact import read_artifact

    started = time.perf_counter()
    artifact = read_artifact(args.model)
    scorer = load_scorer(args.scorer) if args.scorer else default_scorer()
    arrays = test_arrays(args.model, args.data, args.cache, args.backend, args.batch_size, args.workers)
    truth = truth_lines(arrays["meta_path"], arrays["count"])
    probs = apply_temperature(arrays["raw"], artifact.temperature)
    pops = populations(artifact.labels, probs, truth)
    results = simulate(pops, scorer, args.seeds)
    simulated = time.perf_counter() - started
    report = {"command": "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_TOP_PAD_=1000000000 "
                         ".venv/bin/python " + " ".join(["benchmarks/audit_recall.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU, Python {platform.python_version()}",
              "data": args.data, "split": "test", "seeds": args.seeds, "budgets": list(BUDGETS),
              "cases": [case_key(m, r) for m, r in CASES], "spread": "mean and standard deviation over the seeds",
              "error_model": "bintally.audit.simulate.corrupt_records (docs/audit.md, 'The error model')",
              "rankers": {k: {"label": v[0], "source": v[1]} for k, v in RANKERS.items()},
              "model": model_info(args.model, arrays, args.scorer or "bintally/audit/scorers/default.json", scorer),
              "results": results}
    if args.speed:
        load = [round(x, 2) for x in os.getloadavg()]
        report["speed"] = audit_speed(args.model, args.sample) | {"load_average_before": load}
        report["speed"]["score_bins_only"] = scoring_speed(artifact.labels, arrays["raw"], artifact.temperature, truth)
    report["seconds"] = {"probabilities_and_simulation": round(simulated, 1), "total": round(time.perf_counter() - started, 1)}
    out = REPO / args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report), flush=True)
    print(f"wrote {out} in {report['seconds']['total']} s", flush=True)
    return report
