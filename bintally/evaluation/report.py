"""The evaluation report: plots, metric tables with confidence intervals, and published results beside ours."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jinja2 import Template  # noqa: E402

from bintally.evaluation.predictions import prediction_probs  # noqa: E402
from bintally.io import write_frame_csv  # noqa: E402

# accuracy and RMSE as published; None where a work did not report the figure
PUBLISHED = [
    {"work": "abid_challenge, ResNet34 (about 480,000 training photos)", "subset": "0-5", "accuracy": 0.5567, "rmse": 0.930},
    {"work": "Bertorello et al.", "subset": "0-5", "accuracy": 0.559, "rmse": 0.901},
    {"work": "Udacity capstone projects (small subsets)", "subset": "1-5", "accuracy": (0.31, 0.38), "rmse": None},
]

PAGE = Template("""<!doctype html>
<html><head><meta charset="utf-8"><title>bintally evaluation</title>
<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}.note{background:#fff8e0;padding:0.6em 1em;border-left:4px solid #e0b000}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}</style></head><body>
<h1>Evaluation</h1>
<table>{% for k, v in info.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
<h2>Summary (95% bootstrap intervals in brackets)</h2>
<table><tr><th>photos</th><th>n</th><th>accuracy</th><th>RMSE</th><th>MAE</th><th>within ±1</th><th>rel. error</th><th>ECE</th></tr>
{% for row in summary %}<tr><td>{{ row.name }}</td><td>{{ row.n }}</td>{% for cell in row.cells %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}
</table>
<p>{% if real_counts %}Errors are against each photo's real count{% else %}Errors are against the count of each photo's true
class (the predictions have no true_count column){% endif %}{% if overflow %}, a prediction of the overflow class "{{ overflow }}"
counting as {{ max_count + 1 }} items{% if real_counts %} (a bin of {{ 2 * (max_count + 1) }} predicted "{{ overflow }}" is an error
of {{ max_count + 1 }}){% endif %}; on the {{ zero_to_n }} subset that prediction is wrong{% endif %}.
Relative error is the mean of |predicted − true| / max(true, 1).</p>
{% if verification %}<h2>Quantity verification (ABID: is there quantity q of SKU X in the bin?)</h2>
<table><tr><th>questions</th><th>bins</th><th>accuracy</th><th>ROC AUC</th><th>yes above</th><th>threshold from</th></tr>
<tr><td>{{ verification.questions }}</td><td>{{ verification.bins }}</td><td>{{ pct(verification.accuracy) }}</td>
<td>{{ num(verification.roc_auc) }}</td><td>{{ num(verification.threshold) }}</td><td>{{ verification.threshold_from }}</td></tr></table>
<p>Per SKU line, one question with the recorded quantity and one with another quantity; P(yes) is the model's probability
that the bin holds that quantity plus the other lines' quantities.</p>{% endif %}
<h2>Against published results</h2>
<table><tr><th>model</th><th>subset</th><th>accuracy</th><th>RMSE</th></tr>
{% for row in published %}<tr><td>{{ row.work }}</td><td>{{ row.subset }}</td><td>{{ row.accuracy }}</td><td>{{ row.rmse }}</td></tr>{% endfor %}
</table>
<p class="note">These figures are not directly comparable: the published works trained and tested on other
subsets of ABID, with other splits (mostly random, not grouped by id blocks as here) and with far more
training photos. Read them as a rough bar, not as a like-for-like comparison.</p>
{% for title, file in plots %}<h2>{{ title }}</h2><img src="{{ file }}" alt="{{ title }}">{% endfor %}
<h2>Per class</h2>
<table><tr><th>class</th><th>n</th><th>predicted</th><th>precision</th><th>recall</th><th>F1</th><th>accuracy (one vs rest)</th><th>MAE</th></tr>
{% for r in per_class %}<tr><td>{{ r['class'] }}</td><td>{{ r.n }}</td><td>{{ r.predicted }}</td><td>{{ pct(r.precision) }}</td>
<td>{{ pct(r.recall) }}</td><td>{{ pct(r.f1) }}</td><td>{{ pct(r.accuracy) }}</td><td>{{ num(r.mae) }}</td></tr>{% endfor %}
</table>
<p>Predictions: <a href="predictions.csv">predictions.csv</a>; every figure: <a href="metrics.json">metrics.json</a>.</p>
</body></html>""")


def pct(value) -> str:
    return "–" if value is None or value != value else f"{100 * value:.1f}%"


def num(value) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"


def with_interval(metrics: dict, key: str, fmt) -> str:
    low_high = metrics["ci95"].get(key)
    text = fmt(metrics.get(key))
    return f"{text} [{fmt(low_high[0])}, {fmt(low_high[1])}]" if low_high else text


def summary_rows(metrics: dict, subsets: list[tuple[str, str]]) -> list[dict]:
    rows = []
    for name, suffix in subsets:
        cells = [with_interval(metrics, f"accuracy{suffix}", pct), with_interval(metrics, f"rmse{suffix}", num),
                 with_interval(metrics, f"mae{suffix}", num), with_interval(metrics, f"within1{suffix}", pct),
                 with_interval(metrics, f"rel_error{suffix}", num), num(metrics.get(f"ece{suffix}"))]
        rows.append({"name": name if name == "all" else f"counts {name}", "n": metrics[f"n{suffix}"], "cells": cells})
    return rows


def published_rows(metrics: dict, subsets: list[tuple[str, str]]) -> list[dict]:
    def fmt_accuracy(a):
        return f"{100 * a[0]:.0f}-{100 * a[1]:.0f}%" if isinstance(a, tuple) else pct(a)

    rows = [{**r, "accuracy": fmt_accuracy(r["accuracy"]), "rmse": num(r["rmse"])} for r in PUBLISHED]
    ours = dict(reversed(subsets))  # name -> suffix; where two subsets share a name (min_count 1), the first wins
    for subset in ("0-5", "1-5"):
        suffix = ours.get(subset)
        if suffix is not None and metrics[f"n{suffix}"]:
            rows.append({"work": "<b>this model</b>", "subset": subset, "accuracy": f"<b>{pct(metrics[f'accuracy{suffix}'])}</b>",
                         "rmse": f"<b>{num(metrics[f'rmse{suffix}'])}</b>"})
    return rows


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path) -> None:
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black", fontsize=9)
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted count", ylabel="true count", title="Confusion matrix (colour: share of the true class)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    save(fig, path)


def plot_reliability(calibration: dict, path: Path) -> None:
    bins = [b for b in calibration["bins"] if b["n"]]
    centres = [(b["low"] + b["high"]) / 2 for b in calibration["bins"]]
    width = calibration["bins"][0]["high"] - calibration["bins"][0]["low"]
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["accuracy"] for b in bins], width=width * 0.9,
           edgecolor="#4c72b0", color="#4c72b099", label="accuracy in bin")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="#c44e52", label="mean confidence")
    ax.set(ylabel="accuracy", ylim=(0, 1), title=f"Reliability (ECE {calibration['ece']:.3f})")
    ax.legend(loc="upper left")
    hist.bar(centres, [b["n"] for b in calibration["bins"]], width=width * 0.9, color="#888888")
    hist.set(xlabel="confidence of the predicted count", ylabel="photos", xlim=(0, 1))
    save(fig, path)


def plot_per_class(per_class: list[dict], path: Path) -> None:
    names = [r["class"] for r in per_class]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 4))
    for offset, key, colour in ((-0.2, "precision", "#4c72b0"), (0.2, "recall", "#dd8452")):
        ax.bar(x + offset, [r[key] for r in per_class], width=0.4, label=key, color=colour)
    ax.set(xticks=x, xticklabels=names, xlabel="count", ylim=(0, 1), title="Precision and recall per count")
    ax.legend()
    save(fig, path)


def plot_counts(predictions, space, path: Path) -> None:
    classes = space.names
    x = np.arange(len(classes))
    true = np.bincount(predictions["true_label"], minlength=len(classes))
    pred = np.bincount(predictions["predicted_label"], minlength=len(classes))
    fig, (ax, box) = plt.subplots(1, 2, figsize=(11, 4))
    ax.bar(x - 0.2, true, width=0.4, label="true", color="#55a868")
    ax.bar(x + 0.2, pred, width=0.4, label="predicted", color="#4c72b0")
    ax.set(xticks=x, xticklabels=classes, xlabel="count", ylabel="photos", title="How often each count occurs")
    ax.legend()
    expected = space.expected_counts(prediction_probs(predictions))  # from the probabilities: a saved file may lack the column
    groups = [expected[predictions["true_label"].to_numpy() == c] for c in x]
    box.boxplot([g if len(g) else [np.nan] for g in groups], positions=x)
    box.plot(x, space.count_of(x), "--", color="grey")
    box.set(xticks=x, xticklabels=classes, xlabel="true count", ylabel="expected count", title="Expected count by true count")
    save(fig, path)


def write_report(evaluation, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m, classes = evaluation.metrics, evaluation.classes
    plot_confusion(np.array(m["confusion"]["matrix"]), classes, out / "confusion.png")
    plot_reliability(m["calibration"], out / "reliability.png")
    plot_per_class(m["per_class"], out / "per_class.png")
    plot_counts(evaluation.predictions, evaluation.space, out / "counts.png")
    evaluation.write_json(out / "metrics.json")
    write_frame_csv(out / "predictions.csv", evaluation.predictions)
    plots = [("Confusion matrix", "confusion.png"), ("Calibration", "reliability.png"),
             ("Precision and recall per count", "per_class.png"), ("Count distribution", "counts.png")]
    subsets = evaluation.subset_names()
    page = PAGE.render(info=evaluation.info, summary=summary_rows(m, subsets), published=published_rows(m, subsets), plots=plots,
                       per_class=m["per_class"], pct=pct, num=num, zero_to_n=subsets[1][0], overflow=evaluation.space.overflow and classes[-1],
                       max_count=evaluation.max_count, verification=m.get("quantity_verification"),
                       real_counts="true_count" in evaluation.predictions)
    (out / "index.html").write_text(page)
    return out / "index.html"
