"""The audit benchmark's code path (benchmarks/audit_lines.py) on real sample records and made-up probabilities."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from bintally.audit.record_scorer import default_scorer
from bintally.labels import LabelSpace
from bintally.paths import SAMPLE_DIR
from tests.conftest import REPO

BINS = 40


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("audit_lines", REPO / "benchmarks" / "audit_lines.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit_lines"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("audit_lines", None)


@pytest.fixture(scope="module")
def sample_truth(bench):
    """The record lines of 40 sample bins, and their counts from EXPECTED_QUANTITY."""
    import json

    metas = sorted((SAMPLE_DIR / "metadata").glob("*.json"))[:BINS]
    counts = [json.loads(m.read_text())["EXPECTED_QUANTITY"] for m in metas]
    return bench.truth_lines([str(m) for m in metas], counts), np.array(counts)


def sure_of(space: LabelSpace, counts: np.ndarray) -> np.ndarray:
    """Probabilities that put 0.97 on each bin's true count."""
    probs = np.full((len(counts), space.n_classes), 0.03 / (space.n_classes - 1))
    probs[np.arange(len(counts)), space.class_of(counts)] = 0.97
    return probs


def test_a_model_sure_of_every_true_count_puts_every_wrong_record_first_and_random_does_not(bench, sample_truth):
    truth, counts = sample_truth
    space = LabelSpace(0, 20, True)
    pops = bench.populations(space, sure_of(space, counts), truth)
    results = bench.simulate(pops, default_scorer(), seeds=3)

    case = results["all"]["cases"]["default@0.10"]
    assert case["errors_per_seed"] == 4
    mismatch, rand = case["rankers"]["mismatch"], case["rankers"]["random"]
    assert mismatch["recall_at_10"] == {"mean": 1.0, "sd": 0.0} and mismatch["roc_auc"]["mean"] == 1.0
    assert mismatch["precision_at_10"]["mean"] == 1.0 and mismatch["lift_at_10"]["mean"] == pytest.approx(10.0)
    assert rand["roc_auc"]["mean"] < 0.95 and rand["recall_at_10"]["mean"] < 1.0
    assert set(case["rankers"]) == set(bench.RANKERS)
    by_type = mismatch["recall_at_10_by_type"]
    assert sum(t["errors"] for t in by_type.values()) == 3 * 4 == sum(t["caught"] for t in by_type.values())
    small = results["0-5"]
    assert small["bins"] == int((counts <= 5).sum()) and set(small["cases"]) == {"default@0.02", "default@0.05", "default@0.10", "shifted@0.05"}


def test_the_markdown_report_has_every_ranker_and_a_verdict_per_target(bench, sample_truth):
    truth, counts = sample_truth
    space = LabelSpace(0, 20, True)
    rng = np.random.default_rng(0)
    pops = bench.populations(space, rng.dirichlet(np.ones(space.n_classes), len(counts)), truth)
    text = bench.markdown({"results": bench.simulate(pops, default_scorer(), seeds=2)})
    for label, _ in bench.RANKERS.values():
        assert label in text
    verdicts = [line for line in text.splitlines() if line.startswith(("| all bins", "| true count 0-5"))]
    assert len(verdicts) == 3 and all(("met by" in v or "missed by" in v) and "stretch" in v for v in verdicts)
    assert "auto`**: record-aware scorer, `lines` variant − `mismatch`" in text
