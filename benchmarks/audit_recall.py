"""How many record errors does a recount budget catch? (issue 11; with --lines, issue 18)

    .venv/bin/python benchmarks/audit_recall.py [--data runs/abid.parquet] [--seeds 20] [--cache runs/audit-recall]
    .venv/bin/python benchmarks/audit_recall.py --lines [--model runs/whole-range] [--speed]

--lines runs the issue-18 benchmark instead (SKU lines, the record-aware scorer, the whole count range, the audit's
speed): benchmarks/audit_lines.py says what it does. Without it, the issue-11 benchmark below.

The test split's records (its counts) are taken as true. In each of `--seeds` corruption seeds a share pi of
them is made wrong by the error model below, and every ranker orders the bins; the top 10% and 20% are the
recount budget. Four rankers: random selection, the largest records first, |expected count - record|, and
bintally's audit score 1 - p_record (`bintally.audit.scoring`) on temperature-scaled probabilities; beside
them the same score at T = 1 (what the temperature changes) and two extras, |expected - min(record, 6)| and
sum_k p_k |count_k - min(record, 6)|. Selection of the top share uses
`bintally.audit.select_tasks`, as `bintally audit run` does, after a random shuffle of the bins so that ties
(abid-best's score of 1 for every record above 5, equal records) are broken at random, not by bin order.

Error model (one seed, one pi): round(pi * N) bins drawn uniformly without replacement; each gets
  +-1 (60%), +-2 (25%) with a random sign, the record clipped at 0; a bin with true count 0 drawn for -k gets
  +k instead (clipping would leave its record right);
  empty <-> non-empty (15%): a non-empty bin is recorded as 0; an empty bin gets a record drawn from the
  population's non-zero true counts (its empirical distribution).
The "0-5-kept" population flips the sign of a +-k error whose record would leave 0-5.

Populations (bins scored): all test bins; those with true count 0-5 (the only ones abid-best, which has no
6+ class, can score); the same with records kept in 0-5; the test bins the demo model never saw.

Probabilities are computed once per model (test split; the temperature's fitting set) and cached in
CACHE/<model>-<version>.npz; the seeds run on the cached arrays. Temperatures: fitted with
`bintally.evaluation.calibration.fit_temperature` on
  demo          the validation split of --data, less the photos the demo model trained or was selected on
                (the bundled sample overlaps the mirror)
  spatial-6plus the validation split of --data (the run selects its last epoch: val did not choose it)
  abid-best     out-of-fold predictions: each fold model runs/abid-best/fold-k/model on its own validation
                fold (runs/abid-best/folds/fold-k.parquet, split == "val"), pooled; the ensemble's val
                photos trained 4 of its 5 members, so fitting there (the val split as for a single model) is
                also computed, as a diagnostic only.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from bintally.audit.run import select_tasks
from bintally.evaluation.calibration import calibration_summary, fit_temperature, out_of_fold_predictions
from bintally.evaluation.evaluate import evaluation_photos, keep_readable, predict_photos, read_data
from bintally.inference.temperature import apply_temperature
from bintally.labels import LabelSpace
from bintally.models.artifact import read_artifact

MODELS = {  # name: (path, how its temperature is fitted, label)
    "demo": ("runs/demo/model", "val-unseen", "runs/demo/model (`fast` preset on the bundled sample; 0-5 + 6+)"),
    "spatial-6plus": ("runs/audit-spatial", "val", "runs/audit-spatial (`--preset spatial --overflow class`; 0-5 + 6+)"),
    "abid-best": ("runs/abid-best", "oof", "runs/abid-best (5-fold ensemble, 0-5 only, no 6+ class)"),
}
RATES = (0.02, 0.05, 0.10)
BUDGETS = (0.10, 0.20)
TYPES = ("pm1", "pm2", "empty")  # +-1, +-2, empty <-> non-empty
TYPE_P = (0.60, 0.25, 0.15)
BASELINES = ("random", "largest_record")
MODEL_RANKERS = ("abs_expected", "score", "score_t1", "abs_expected_clipped", "expected_abs_error")
RANKER_NAMES = {"random": "random", "largest_record": "largest records first", "abs_expected": "|expected count - record|",
                "score": "1 - p_record (calibrated)", "score_t1": "1 - p_record (T = 1)",
                "abs_expected_clipped": "extra: |expected count - min(record, max_count + 1)|",
                "expected_abs_error": "extra: sum_k p_k |count_k - min(record, max_count + 1)| (the overflow class as max_count + 1)"}


# ---------------------------------------------------------------- probabilities (cached)


def predict(model, df: pd.DataFrame, split: str, backend: str, batch_size: int, workers: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Raw (T = 1) probabilities of the usable photos of one split of df, and those photos (with scoring labels)."""
    from bintally.inference import Counter

    counter = Counter.load(model, backend, calibrated=False)
    photos, info = evaluation_photos(df, split, counter.labels)
    prediction, kept = predict_photos(counter, photos, batch_size, workers, progress=False)
    return prediction.raw.astype(np.float64), keep_readable(photos, kept, info)


def model_arrays(name: str, args) -> dict:
    path, fit, _ = MODELS[name]
    artifact = read_artifact(path)
    cache = Path(args.cache) / f"{name}-{artifact.version}.npz"
    df = read_data(args.data, progress=False)
    test_sha = df.loc[df["split"] == "test", "sha256"].astype(str).to_numpy()
    if cache.is_file():
        arrays = dict(np.load(cache, allow_pickle=False))
        if sorted(arrays["test_sha"].tolist()) == sorted(test_sha.tolist()):
            print(f"{name}: cached probabilities {cache}", flush=True)
            return arrays | {"cache": np.array(str(cache)), "from_cache": np.array(True)}
    out = {"version": np.array(artifact.version)}
    started = time.perf_counter()
    probs, photos = predict(path, df, "test", args.backend, args.batch_size, args.workers)
    out |= {"test_probs": probs, "test_count": photos["count"].to_numpy(dtype=int), "test_sha": photos["sha256"].to_numpy(dtype=str),
            "test_seconds": np.array(time.perf_counter() - started)}
    started = time.perf_counter()
    if fit == "oof":
        p, ph, _ = out_of_fold_predictions(Path(path), args.backend, args.batch_size, args.workers, progress=False)
        out |= {"fit_probs": p.astype(np.float64), "fit_label": ph["label"].to_numpy(dtype=int)}
        p, ph = predict(path, df, "val", args.backend, args.batch_size, args.workers)  # diagnostic: the ensemble on val (in-sample)
        out |= {"insample_probs": p, "insample_label": ph["label"].to_numpy(dtype=int)}
    else:
        fit_df = df
        if fit == "val-unseen":
            seen = read_data("runs/demo/manifest.parquet", progress=False)
            seen = set(seen.loc[seen["split"].isin(["train", "val"]), "sha256"].astype(str))
            fit_df = df[~df["sha256"].astype(str).isin(seen)]
            fit_df.attrs["info"] = df.attrs.get("info", {})
        p, ph = predict(path, fit_df, "val", args.backend, args.batch_size, args.workers)
        out |= {"fit_probs": p, "fit_label": ph["label"].to_numpy(dtype=int)}
    out["fit_seconds"] = np.array(time.perf_counter() - started)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **out)
    out |= {"cache": np.array(str(cache)), "from_cache": np.array(False)}
    print(f"{name}: predicted test in {float(out['test_seconds']):.0f} s, fitting set in {float(out['fit_seconds']):.0f} s", flush=True)
    return out


# ---------------------------------------------------------------- calibration and accuracy


def in_space(space: LabelSpace, probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = labels < space.n_classes  # a 0-5 model has no class for photos above 5
    return probs[keep], labels[keep]


def accuracy_0_5(space: LabelSpace, probs: np.ndarray, counts: np.ndarray, decoding: str) -> float:
    keep = counts <= 5
    predicted = space.count_of(space.decode(probs[keep], decoding))  # an overflow prediction counts as 6: wrong
    return float((predicted == counts[keep]).mean())


def decoded_ece(space: LabelSpace, probs: np.ndarray, labels: np.ndarray, decoding: str, t: float) -> dict:
    """ECE of the reported confidence (the probability of the decoded class, as `bintally evaluate` reports it), before/after."""
    from bintally.evaluation.metrics import calibration

    scaled = apply_temperature(probs, t)
    return {"ece_before": round(calibration(probs, labels, space.decode(probs, decoding))["ece"], 4),
            "ece_after": round(calibration(scaled, labels, space.decode(scaled, decoding))["ece"], 4)}


def calibrate(name: str, arrays: dict) -> dict:
    artifact = read_artifact(MODELS[name][0])
    space, decoding = artifact.labels, artifact.decoding
    fit_probs, fit_labels = in_space(space, arrays["fit_probs"], arrays["fit_label"])
    t = fit_temperature(fit_probs, fit_labels)
    test_counts = arrays["test_count"]
    test_labels = LabelSpace(space.min_count, space.max_count, True).label_of(test_counts).to_numpy(dtype=int)
    test_probs, test_labels_in = in_space(space, arrays["test_probs"], test_labels)
    cal_test = apply_temperature(arrays["test_probs"], t)
    result = {"path": MODELS[name][0], "description": MODELS[name][2], "version": str(arrays["version"]), "classes": space.names,
              "decoding": decoding, "temperature": t, "fitting_set": calibration_summary(fit_probs, fit_labels, t),
              "test": calibration_summary(test_probs, test_labels_in, t),
              "decoded_class_ece": {"fitting_set": decoded_ece(space, fit_probs, fit_labels, decoding, t),
                                    "test": decoded_ece(space, test_probs, test_labels_in, decoding, t)},
              "test_photos": int(len(test_counts)), "test_photos_0_5": int((test_counts <= 5).sum()),
              "accuracy_0_5": round(accuracy_0_5(space, arrays["test_probs"], test_counts, decoding), 4),
              "accuracy_0_5_calibrated": round(accuracy_0_5(space, cal_test, test_counts, decoding), 4),
              "decoded_changed_by_temperature": int((space.decode(arrays["test_probs"], decoding) != space.decode(cal_test, decoding)).sum()),
              "prediction_seconds": {"test": round(float(arrays["test_seconds"]), 1), "fitting_set": round(float(arrays["fit_seconds"]), 1),
                                     "note": "when the probabilities were computed (2 cores, onnx backend, TTA); this run read them from "
                                             + str(arrays["cache"]) if bool(arrays["from_cache"]) else "computed in this run"},
              "temperature_fit_on_test_diagnostic": fit_temperature(test_probs, test_labels_in),
              # what a record of 0 for a non-empty bin scores against, beside what a right record gets (calibrated)
              "median_p0_nonempty_test": round(float(np.median(cal_test[test_counts > 0, 0])), 4),
              "median_p_true_class_test": round(float(np.median(apply_temperature(test_probs, t)[np.arange(len(test_labels_in)), test_labels_in])), 4)}
    if "insample_probs" in arrays:
        p, labels = in_space(space, arrays["insample_probs"], arrays["insample_label"])
        t_in = fit_temperature(p, labels)
        result["insample_val_diagnostic"] = calibration_summary(p, labels, t_in) | {
            "note": "the ensemble on the val split, whose photos trained 4 of its 5 members: not used"}
    return result


# ---------------------------------------------------------------- corruption and ranking


def corrupt(counts: np.ndarray, rate: float, rng: np.random.Generator, keep_range: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """(records, error type per bin: -1 clean, else an index into TYPES, tallies of the rules used)."""
    n = len(counts)
    records, kind = counts.copy(), np.full(n, -1)
    chosen = rng.choice(n, size=int(round(rate * n)), replace=False)
    nonzero = counts[counts > 0]
    tally = {"clipped_at_0": 0, "sign_flipped_at_0": 0, "sign_flipped_range": 0, "empty_to_nonzero": 0, "nonzero_to_empty": 0}
    for i, t in zip(chosen, rng.choice(len(TYPES), size=len(chosen), p=TYPE_P)):
        c = counts[i]
        if TYPES[t] == "empty":
            if c > 0:
                records[i] = 0
                tally["nonzero_to_empty"] += 1
            else:
                records[i] = rng.choice(nonzero)
                tally["empty_to_nonzero"] += 1
        else:
            step = (1 if TYPES[t] == "pm1" else 2) * rng.choice((-1, 1))
            if c == 0 and step < 0:
                step, tally["sign_flipped_at_0"] = -step, tally["sign_flipped_at_0"] + 1
            elif keep_range and c + step > 5:
                step, tally["sign_flipped_range"] = -step, tally["sign_flipped_range"] + 1
            if c + step < 0:
                tally["clipped_at_0"] += 1
            records[i] = max(0, c + step)
        kind[i] = t
    assert (records[chosen] != counts[chosen]).all()
    return records, kind, tally


def ranker_scores(name: str, model: dict, records: np.ndarray, rng_random: np.ndarray) -> np.ndarray:
    if name == "random":
        return rng_random
    if name == "largest_record":
        return records.astype(float)
    space = model["space"]
    probs = model["probs_t1"] if name == "score_t1" else model["probs"]
    if name == "abs_expected":
        return np.abs(space.expected_counts(probs) - records)
    clipped = np.minimum(records, space.max_count + 1)
    if name == "abs_expected_clipped":
        return np.abs(space.expected_counts(probs) - clipped)
    if name == "expected_abs_error":
        counts = space.count_of(np.arange(space.n_classes)).astype(float)
        return (probs * np.abs(counts[None, :] - clipped[:, None])).sum(-1)
    return 1.0 - space.probability_of(probs, records)


def evaluate_ranking(scores: np.ndarray, wrong: np.ndarray, kind: np.ndarray, perm: np.ndarray, rng) -> dict:
    """Budget metrics (the top share by `select_tasks`, ties in shuffled order), AUCs and the recall curve."""
    n, errors = len(scores), int(wrong.sum())
    order = perm[np.argsort(-scores[perm], kind="stable")]
    hits = np.concatenate([[0], np.cumsum(wrong[order])])
    out = {"roc_auc": roc_auc_score(wrong, scores), "pr_auc": average_precision_score(wrong, scores)}
    for b in BUDGETS:
        chosen = perm[select_tasks(scores[perm], b, None, 0.0, rng)[0]]
        assert len(chosen) == math.ceil(b * n - 1e-9) and hits[len(chosen)] == wrong[chosen].sum()
        caught = int(wrong[chosen].sum())
        tag = f"{round(b * 100)}"
        out[f"recall_at_{tag}"] = caught / errors
        out[f"precision_at_{tag}"] = caught / len(chosen)
        out[f"lift_at_{tag}"] = (caught / errors) / (len(chosen) / n)
        if b == 0.10:
            top = np.zeros(n, bool)
            top[chosen] = True
            for t, tname in enumerate(TYPES):
                out[f"caught_{tname}"], out[f"errors_{tname}"] = int((top & (kind == t)).sum()), int((kind == t).sum())
    ks = np.ceil(np.arange(101) / 100 * n - 1e-9).astype(int)
    out["curve"] = hits[ks] / errors
    return out


def summarise(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": round(float(v.mean()), 4), "lo": round(float(np.percentile(v, 2.5)), 4), "hi": round(float(np.percentile(v, 97.5)), 4)}


def paired(runs: dict, names: list[str]) -> dict:
    """Differences of recall@10% on the same corrupted records (seed by seed): each model's rankers against its
    1 - p_record, and each model's 1 - p_record against the others'."""
    recall = {key: np.array([s["recall_at_10"] for s in seeds_out]) for key, seeds_out in runs.items()}
    out = {}
    for m in names:
        for r in ("abs_expected", "abs_expected_clipped", "expected_abs_error", "score_t1"):
            out[f"{m}: {r} - score"] = summarise(recall[(m, r)] - recall[(m, "score")])
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            out[f"score: {b} - {a}"] = summarise(recall[(b, "score")] - recall[(a, "score")])
    return out


def simulate(populations: dict, models: dict, seeds: int) -> tuple[dict, dict]:
    results, curves = {}, {}
    for p_index, (pop, spec) in enumerate(populations.items()):
        mask = spec["mask"]
        counts = spec["counts"]
        rankers = [("baseline", r) for r in BASELINES] + [(m, r) for m in spec["models"] for r in MODEL_RANKERS]
        sliced = {m: models[m] | {"probs": models[m]["probs"][mask], "probs_t1": models[m]["probs_t1"][mask]} for m in spec["models"]}
        results[pop] = {"description": spec["description"], "bins": int(mask.sum()), "rates": {}}
        curves[pop] = {}
        for rate in RATES:
            runs = {key: [] for key in rankers}
            tallies = []
            above_5, same_class = [], {m: [] for m in spec["models"]}
            for seed in range(seeds):
                rng = np.random.default_rng(np.random.SeedSequence([seed, round(rate * 1000), p_index]))
                records, kind, tally = corrupt(counts, rate, rng, spec["keep_range"])
                wrong = kind >= 0
                tallies.append(tally)
                above_5.append(float((records[wrong] > 5).mean()))
                for m in spec["models"]:  # errors no class probability can see: record and truth in the same class
                    space = models[m]["space"]
                    same_class[m].append(float((space.class_of(records[wrong]) == space.class_of(counts[wrong])).mean()))
                perm, random_scores = rng.permutation(len(counts)), rng.random(len(counts))
                for owner, r in rankers:
                    scores = ranker_scores(r, sliced.get(owner), records, random_scores)
                    runs[(owner, r)].append(evaluate_ranking(scores, wrong, kind, perm, rng))
            entry = {"errors": int(round(rate * len(counts))), "records_above_5_share": summarise(above_5),
                     "same_class_share": {m: summarise(v) for m, v in same_class.items()},
                     "rules": {k: int(sum(t[k] for t in tallies)) for k in tallies[0]}, "rankers": {}}
            for (owner, r), seeds_out in runs.items():
                metrics = {k: summarise([s[k] for s in seeds_out]) for k in seeds_out[0] if k.split("_")[0] in ("recall", "precision", "lift", "roc", "pr")}
                by_type = {}
                for tname in TYPES:
                    caught, errs = sum(s[f"caught_{tname}"] for s in seeds_out), sum(s[f"errors_{tname}"] for s in seeds_out)
                    by_type[tname] = {"caught": caught, "errors": errs, "recall_at_10_pooled": round(caught / errs, 4) if errs else None}
                entry["rankers"].setdefault(owner, {})[r] = metrics | {"recall_at_10_by_type": by_type}
                if rate == 0.05:
                    curves[pop].setdefault(owner, {})[r] = np.mean([s["curve"] for s in seeds_out], axis=0).round(4).tolist()
            entry["paired_recall_at_10"] = paired(runs, spec["models"])
            results[pop]["rates"][f"{rate:.2f}"] = entry
            print(f"{pop} pi={rate:.2f} done", flush=True)
    return results, curves


# ---------------------------------------------------------------- the plot


def plot(curves: dict, populations: dict, out: Path) -> None:
    """Recall against budget at pi = 5%: a row per population (all bins; true count 0-5), a column per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown, names = ("all", "0-5"), list(MODELS)
    fig, axes = plt.subplots(len(shown), len(names), figsize=(5.0 * len(names), 4.4 * len(shown)), squeeze=False)
    budget = np.arange(101)
    styles = {"score": dict(color="tab:blue", lw=2.2), "abs_expected": dict(color="tab:orange", lw=1.6),
              "expected_abs_error": dict(color="tab:green", lw=1.2, ls="--"), "largest_record": dict(color="black", lw=1, ls="-."),
              "random": dict(color="grey", lw=1, ls=":")}
    for row, pop in zip(axes, shown):
        for ax, m in zip(row, names):
            c = curves[pop]
            for r, style in styles.items():
                values = c["baseline"][r] if r in BASELINES else c[m][r]
                label = "extra: sum_k p_k |count_k - min(record, 6)|" if r == "expected_abs_error" else RANKER_NAMES[r]
                ax.plot(budget, np.array(values) * 100, label=label, **style)
            ax.scatter([10], [30], marker="*", s=110, color="red", zorder=5, label="target: 30% at a 10% budget")
            ax.axvline(10, color="red", lw=0.5)
            ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="recount budget (% of bins, highest score first)",
                   ylabel="corrupted records caught (%)", title=f"{m}: {populations[pop]['description']}")
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Record errors caught per recount budget at pi = 5% (ABID test split, mean of 20 corruption seeds)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def compact_json(value) -> str:
    """Indented JSON with every innermost list or object (numbers, a {mean, lo, hi}) on one line."""
    text = json.dumps(value, indent=1)
    return re.sub(r"[\[{][^\[\]{}]*[\]}]", lambda m: re.sub(r"\s*\n\s*", " ", m.group(0)), text)


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/abid.parquet")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--cache", default="runs/audit-recall")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "torch"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None, help="default: benchmarks/results/audit_recall.json, with --lines audit-lines.json")
    parser.add_argument("--plot", default="docs/img/audit/recall_budget.png")
    parser.add_argument("--lines", action="store_true", help="the issue-18 benchmark (benchmarks/audit_lines.py)")
    parser.add_argument("--model", default="runs/whole-range", help="--lines: the model (a 5-fold run's ensemble)")
    parser.add_argument("--scorer", default=None, help="--lines: a record scorer file (default: the shipped one)")
    parser.add_argument("--speed", action="store_true", help="--lines: also time `bintally audit run` on --sample")
    parser.add_argument("--sample", default="bintally/sample", help="--lines --speed: the bucket folder to audit")
    args = parser.parse_args()
    if args.lines:
        import audit_lines

        args.json = args.json or "benchmarks/results/audit-lines.json"
        audit_lines.run(args)
        return
    args.json = args.json or "benchmarks/results/audit_recall.json"
    started = time.perf_counter()

    models, model_info = {}, {}
    for name in MODELS:
        arrays = model_arrays(name, args)
        model_info[name] = calibrate(name, arrays)
        space = read_artifact(MODELS[name][0]).labels
        models[name] = {"space": space, "probs_t1": arrays["test_probs"], "probs": apply_temperature(arrays["test_probs"], model_info[name]["temperature"]),
                        "sha": arrays["test_sha"], "counts": arrays["test_count"]}
        print(json.dumps({name: {k: model_info[name][k] for k in ("temperature", "accuracy_0_5", "fitting_set", "test")}}), flush=True)
    counts = models["demo"]["counts"]
    for m in models.values():  # every model scored the same photos, in the same order
        assert (m["sha"] == models["demo"]["sha"]).all() and (m["counts"] == counts).all()
    probed = time.perf_counter() - started

    sample = read_data("runs/demo/manifest.parquet", progress=False)
    demo_seen = np.isin(models["demo"]["sha"], sample.loc[sample["split"].isin(["train", "val"]), "sha256"].astype(str).to_numpy())
    everything, small = np.ones(len(counts), bool), counts <= 5
    populations = {
        "all": dict(mask=everything, keep_range=False, models=["demo", "spatial-6plus", "abid-best"],
                    description=f"all {len(counts)} test bins"),
        "0-5": dict(mask=small, keep_range=False, models=["demo", "spatial-6plus", "abid-best"],
                    description=f"the {int(small.sum())} test bins with true count 0-5"),
        "0-5-kept": dict(mask=small, keep_range=True, models=["demo", "spatial-6plus", "abid-best"],
                         description=f"the {int(small.sum())} test bins with true count 0-5, records kept in 0-5"),
        "all-unseen-by-demo": dict(mask=~demo_seen, keep_range=False, models=["demo", "spatial-6plus"],
                                   description=f"the {int((~demo_seen).sum())} test bins the demo model never trained or was selected on"),
    }
    for spec in populations.values():
        spec["counts"] = counts[spec["mask"]]
    results, curves = simulate(populations, models, args.seeds)
    simulated = time.perf_counter() - started - probed
    plot(curves, populations, REPO / args.plot)

    report = {
        "command": "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_TOP_PAD_=1000000000 nice -n 5 "
                   ".venv/bin/python " + " ".join(["benchmarks/audit_recall.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores, no GPU, Python {platform.python_version()}",
        "data": args.data, "split": "test", "backend": args.backend, "seeds": args.seeds, "rates": list(RATES), "budgets": list(BUDGETS),
        "interval": "2.5th-97.5th percentile of the per-seed values (the spread one audit of these bins could see)",
        "error_model": {"types": dict(zip(TYPES, TYPE_P)), "sign": "uniform", "clip": "records clipped at 0",
                        "rules": ["a true count of 0 drawn for -k gets +k (clipping would leave the record right)",
                                  "empty <-> non-empty: a non-empty bin is recorded as 0; an empty bin gets a record drawn from the "
                                  "population's non-zero true counts",
                                  "'0-5-kept' populations: a +-k whose record would exceed 5 takes the other sign"]},
        "rankers": RANKER_NAMES, "models": model_info, "results": results, "curves_pi_0_05": curves,
        "seconds": {"probabilities_and_calibration": round(probed, 1), "simulation": round(simulated, 1),
                    "total": round(time.perf_counter() - started, 1)},
    }
    out = REPO / args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(compact_json(report) + "\n")
    print(f"wrote {out} and {args.plot} in {report['seconds']['total']} s", flush=True)


if __name__ == "__main__":
    main()
