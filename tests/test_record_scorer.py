"""The record-aware scorer: the error generator, the features, the fitted scorer on real photos and records, its JSON
file, the explanations, `score_bins`, and `bintally audit fit-scorer`'s refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bintally.audit.explain import explain
from bintally.audit.fit_scorer import Developer, fit_trees, fitted_variant, logit, simulated
from bintally.audit.record_scorer import (
    ALL_FEATURES,
    DEFAULT_SCORER,
    MAX_SCORER_BYTES,
    MAX_TREES,
    VARIANT_FEATURES,
    VARIANTS,
    BinConstants,
    CountDistribution,
    RecordScorer,
    TreeScorer,
    feature_matrix,
    features,
    load_scorer,
    write_scorer,
)
from bintally.audit.scoring import score_bins
from bintally.audit.simulate import ERRORS, MIXES, corrupt_records, total_records, totals
from bintally.audit.snapshots import SnapshotIn
from bintally.data.records import SkuLine, metadata_lines
from bintally.errors import ConfigError, DataError
from bintally.inference import Prediction
from bintally.labels import LabelSpace
from tests.cli_helpers import assert_one_line_error, run_cli

WHOLE = LabelSpace(0, 20, True)


def mirror_truth(mirror: Path, every: int = 8, limit: int = 1000) -> tuple[list[str], list[tuple]]:
    """(ids, record lines) of real mirror bins whose lines add up to their count."""
    ids, truth = [], []
    for meta in sorted((mirror / "metadata").glob("*.json"))[::every][:limit]:
        doc = json.loads(meta.read_text())
        lines = metadata_lines(doc, meta)
        if sum(line.qty for line in lines) == doc["EXPECTED_QUANTITY"]:
            ids.append(meta.stem)
            truth.append(lines)
    return ids, truth


def peaked(space: LabelSpace, counts, weight: float = 0.8) -> np.ndarray:
    """Probabilities with `weight` on each count's class and the rest spread evenly: a photo that shows `counts`."""
    probs = np.full((len(counts), space.n_classes), (1 - weight) / (space.n_classes - 1))
    probs[np.arange(len(counts)), space.class_of(counts)] = weight
    return probs


def line(sku: str, qty: int, size: float | None = 4.0, weight: float | None = 0.5) -> SkuLine:
    return SkuLine(sku, qty, size, size, size, weight)


# ---------------------------------------------------------------- the error generator


def test_the_generator_makes_every_error_at_its_rate_never_negative_and_leaves_the_truth_alone(mirror):
    _, truth = mirror_truth(mirror)
    before = copy.deepcopy(truth)
    made = corrupt_records(truth, 0.4, "default", seed=3)
    assert truth == before  # the truth is untouched
    assert made.corrupted.sum() == round(0.4 * len(truth))  # every drawn bin can have some error
    assert set(made.errors[made.corrupted]) == set(ERRORS) and set(made.errors[~made.corrupted]) == {""}
    assert all(line.qty >= 0 for record in made.records for line in record)
    true_totals, recorded = totals(truth), made.totals()
    assert (recorded[made.corrupted] != true_totals[made.corrupted]).all()  # every error changes the total
    assert all(made.records[i] == truth[i] for i in np.flatnonzero(~made.corrupted))
    kinds = {e: made.errors == e for e in ERRORS}
    assert (recorded[kinds["recorded_empty"]] == 0).all() and (true_totals[kinds["empty_recorded"]] == 0).all()
    assert (recorded[kinds["units_over"]] - true_totals[kinds["units_over"]]).max() <= 2
    phantom = np.flatnonzero(kinds["phantom_line"])
    assert all(len(made.records[i]) == len(truth[i]) + 1 and made.records[i][-1].has_dimensions for i in phantom[:20])
    shares = {e: kinds[e].sum() / made.corrupted.sum() for e in ERRORS}
    assert shares["units_over"] > shares["recorded_empty"] and shares["phantom_line"] > 0.1


def test_the_generator_is_seeded_and_the_shifted_mix_is_different(mirror):
    _, truth = mirror_truth(mirror, every=16)
    a, b = corrupt_records(truth, 0.3, seed=1), corrupt_records(truth, 0.3, seed=1)
    assert a.records == b.records and (a.errors == b.errors).all()
    assert corrupt_records(truth, 0.3, seed=2).records != a.records
    default, shifted = corrupt_records(truth, 0.5, "default", 5), corrupt_records(truth, 0.5, "shifted", 5)
    gap = {name: (m.totals() - totals(truth))[m.corrupted] for name, m in (("default", default), ("shifted", shifted))}
    assert gap["shifted"].mean() > gap["default"].mean() + 1  # mostly phantom lines and large over-counts
    assert (shifted.errors == "phantom_line").mean() > (default.errors == "phantom_line").mean()
    assert corrupt_records(truth, 0.0).corrupted.sum() == 0
    with pytest.raises(ConfigError, match="unknown error mix"):
        corrupt_records(truth, 0.1, "chaotic")
    with pytest.raises(ConfigError, match="error rate"):
        corrupt_records(truth, 1.5)


def test_a_totals_only_truth_is_corrupted_through_one_anonymous_line_per_bin():
    counts = np.array([0, 1, 3, 7, 0, 12] * 20)
    made = corrupt_records(total_records(counts), 0.5, seed=0)
    assert (made.totals()[made.corrupted] != counts[made.corrupted]).all()
    assert (made.totals() >= 0).all() and set(MIXES) == {"default", "shifted"}


# ---------------------------------------------------------------- features


def test_the_tail_spreads_the_overflow_class_over_every_larger_count():
    space = LabelSpace(0, 5, True)
    dist = CountDistribution.of(space, np.array([[0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.5]]))
    counts = np.arange(0, 400)
    p = np.array([dist.p_equal(np.array([c]))[0] for c in counts])
    assert p.sum() == pytest.approx(1.0, abs=1e-9) and (p[6:] > 0).all() and p[7] < p[6]
    assert (p * counts).sum() == pytest.approx(dist.mean()[0], abs=1e-6)
    assert ((counts - dist.mean()[0]) ** 2 * p).sum() == pytest.approx(dist.variance()[0], rel=1e-6)
    for r in (0, 3, 6, 9, 40):
        assert dist.expected_gap(np.array([r]))[0] == pytest.approx((p * np.abs(counts - r)).sum(), abs=1e-6)
        assert dist.p_below(np.array([r]))[0] == pytest.approx(p[:r].sum(), abs=1e-9)


@pytest.mark.parametrize("space", [LabelSpace(0, 5, False), LabelSpace(1, 5, False), LabelSpace(0, 5, True), WHOLE])
def test_features_are_finite_on_empty_huge_and_unmeasured_records_for_every_label_space(space):
    records = [(), (line("a", 10**6),), (line("b", 3, None, None),), (line("c", 7, 1e9, 1e9),), (line("d", 0),),
               tuple(line(f"e{i}", 1) for i in range(1000))]
    probs = np.vstack([np.full((3, space.n_classes), 1 / space.n_classes), np.zeros((1, space.n_classes)),
                       np.full((1, space.n_classes), np.nan), peaked(space, [space.min_count])])
    values = features(CountDistribution.of(space, probs), records)
    assert set(values) == set(ALL_FEATURES)
    assert all(np.isfinite(v).all() and len(v) == len(records) for v in values.values())
    assert values["missing_dims"][2] == 1 and values["log_volume"][2] > 0  # imputed, and flagged
    if not space.overflow:  # a record above the classes gets a floor probability, not 0
        assert values["log_p_record"][1] == pytest.approx(np.log(1e-4)) and values["record_beyond"][1] == 1


def test_a_record_the_photo_contradicts_has_telling_features():
    dist = CountDistribution.of(WHOLE, peaked(WHOLE, [2, 2, 0]))
    values = features(dist, [(line("a", 2),), (line("a", 1), line("b", 8)), (line("a", 1), line("b", 1), line("c", 1))])
    assert values["log_p_record"][0] > values["log_p_record"][1] + 2
    assert values["z_gap"][1] > 2 * values["z_gap"][0] and values["p_below"][1] > 0.7
    assert values["p_fewer_than_lines"][2] > 0.7 and values["p_fewer_than_lines"][0] < 0.2


# ---------------------------------------------------------------- the scorer on real photos and records


@pytest.fixture(scope="module")
def real_developer(mirror, tiny_artifact) -> Developer:
    """About 400 real mirror photos through a real model (the tiny test artifact) with their real record lines."""
    from bintally.data.images import decode_image
    from bintally.inference import Counter

    ids, truth = mirror_truth(mirror, every=20, limit=400)
    counter = Counter.load(tiny_artifact.path, "torch")
    photos = np.stack([counter.preprocess(decode_image(mirror / "bin-images" / f"{i}.jpg")) for i in ids])
    probs = counter.predict(photos).probabilities
    return Developer(CountDistribution.of(counter.labels, probs), truth, {"model": "tiny"})


def test_the_scorer_ranks_corrupted_records_above_clean_ones_on_real_photos(real_developer):
    """The tiny model cannot count (its head is untrained), so the scorer must learn to lean on the lines: the
    records it catches are those the lines give away, a bin recorded empty first."""
    constants = BinConstants()
    n = len(real_developer.truth)
    train = simulated(real_developer, constants, range(4), 0.5, "default", dropout=True, photos=np.arange(n // 2))
    held = simulated(real_developer, constants, [97, 98, 99], 0.3, "default", photos=np.arange(n // 2, n))
    emptied = held["y"] & (held["x"]["record_zero"] == 1)
    assert emptied.sum() >= 3
    for variant in ("lines", "lines-no-photo"):
        scores = fitted_variant(variant, train, 1.0, prior=0.05).probability(held["x"])
        assert ((0 < scores) & (scores < 1)).all()
        assert roc_auc_score(held["y"], scores) > 0.55, variant
        assert scores[held["y"]].mean() > scores[~held["y"]].mean()
        assert np.median(scores[emptied]) > np.quantile(scores, 0.9), variant  # recorded empty: in the top tenth


def test_the_photo_adds_to_the_lines_when_it_can_count(mirror):
    """A photo read right 70% of the time and one off otherwise: the `lines` scorer beats `lines-no-photo` by far."""
    _, truth = mirror_truth(mirror, every=10, limit=600)
    shown = np.clip(totals(truth) + np.random.default_rng(0).choice([-1, 0, 1], len(truth), p=[0.15, 0.7, 0.15]), 0, None)
    developer = Developer(CountDistribution.of(WHOLE, peaked(WHOLE, shown, 0.6)), truth, {})
    n, constants = len(truth), BinConstants()
    train = simulated(developer, constants, range(3), 0.5, "default", dropout=True, photos=np.arange(n // 2))
    held = simulated(developer, constants, [7, 8], 0.1, "default", photos=np.arange(n // 2, n))
    auc = {v: roc_auc_score(held["y"], fitted_variant(v, train, 1.0).probability(held["x"])) for v in VARIANTS}
    assert auc["lines"] > 0.72 and auc["totals"] > 0.72 and auc["lines"] > auc["lines-no-photo"] + 0.08, auc


# ---------------------------------------------------------------- the scorer file


def small_scorer(developer: Developer) -> RecordScorer:
    data = simulated(developer, BinConstants(), range(2), 0.5, "default")
    return RecordScorer({v: fitted_variant(v, data, 1.0, 0.05) for v in VARIANTS}, BinConstants(), 0.05, {"note": "test"})


def test_the_scorer_file_round_trips_and_bad_files_are_refused(tmp_path, real_developer):
    scorer = small_scorer(real_developer)
    path = write_scorer(scorer, tmp_path / "s.json")
    again = load_scorer(path)
    dist = real_developer.dist
    for v in VARIANTS:
        assert again.score(v, dist, real_developer.truth) == pytest.approx(scorer.score(v, dist, real_developer.truth), abs=1e-5)
    doc = json.loads(path.read_text())
    assert doc["format"] == "bintally-record-scorer" and doc["training"] == {"note": "test"}
    bad = {"not json": "{", "no format": "{}", "prior": json.dumps(doc | {"prior": 1.5}),
           "unknown feature": json.dumps(doc | {"variants": {"lines": doc["variants"]["lines"] | {"features": ["x"] * 21}}}),
           "coef length": json.dumps(doc | {"variants": {"totals": doc["variants"]["totals"] | {"coef": [1.0]}}}),
           "NaN": json.dumps(doc | {"variants": {"totals": doc["variants"]["totals"] | {"intercept": float("nan")}}}),
           "zero scale": json.dumps(doc | {"variants": {"totals": doc["variants"]["totals"] | {"scale": [0.0] * 9}}}),
           "photo in no-photo": json.dumps(doc | {"variants": {"lines-no-photo": doc["variants"]["totals"]}}),
           "too large": " " * (MAX_SCORER_BYTES + 1)}
    for name, text in bad.items():
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(DataError) as error:
            load_scorer(tmp_path / "bad.json")
        assert str(tmp_path / "bad.json") in str(error.value) and "\n" not in str(error.value), name


def test_a_tree_scorer_equals_sklearn_on_its_fitting_data_missing_values_included(real_developer):
    data = simulated(real_developer, BinConstants(), range(2), 0.5, "default")
    names = VARIANT_FEATURES["lines"]
    x = feature_matrix(data["x"], names)
    x[np.random.default_rng(0).random(x.shape) < 0.1] = np.nan  # the trees learn where a missing value goes
    model = fit_trees(x, data["y"])
    scorer = TreeScorer.of_model("lines", names, model)
    values = {name: x[:, i] for i, name in enumerate(names)}
    assert len(scorer.leaf) == len(model._predictors) > 1 and scorer.depth == 3
    assert np.abs(scorer.probability(values) - model.predict_proba(x)[:, 1]).max() < 1e-9
    shifted = TreeScorer.of_model("lines", names, model, shift=-2.0)
    assert np.allclose(scorer.logit(values) - shifted.logit(values), 2.0, atol=1e-12)


def tree_file(tmp_path, developer: Developer) -> tuple[RecordScorer, Path]:
    data = simulated(developer, BinConstants(), range(2), 0.5, "default")
    variants = {v: fitted_variant(v, data, 1.0, 0.05, kind="trees" if v != "totals" else "logistic") for v in VARIANTS}
    scorer = RecordScorer(variants, BinConstants(), 0.05, {"note": "trees"})
    return scorer, write_scorer(scorer, tmp_path / "trees.json")


def test_a_tree_scorer_round_trips_through_json_exactly_beside_a_logistic_one(tmp_path, real_developer):
    scorer, path = tree_file(tmp_path, real_developer)
    doc = json.loads(path.read_text())
    assert doc["format_version"] == 2 and doc["variants"]["lines"]["kind"] == "trees"
    assert doc["variants"]["totals"]["kind"] == "logistic" and path.stat().st_size < MAX_SCORER_BYTES
    again = load_scorer(path)
    assert isinstance(again.variants["lines"], TreeScorer) and not isinstance(again.variants["totals"], TreeScorer)
    dist, truth = real_developer.dist, real_developer.truth
    for v in ("lines", "lines-no-photo"):  # trees exactly (a logistic file rounds to 6 places)
        assert np.array_equal(again.score(v, dist, truth), scorer.score(v, dist, truth)), v
    assert again.score("totals", dist, truth) == pytest.approx(scorer.score("totals", dist, truth), abs=1e-5)
    data = simulated(real_developer, BinConstants(), range(2), 0.5, "default")  # the prior moved the raw score
    share, unshifted = data["y"].mean(), fitted_variant("lines", data, None, kind="trees")
    moved = scorer.variants["lines"].logit(data["x"]) - unshifted.logit(data["x"])
    assert np.allclose(moved, logit(0.05) - logit(share), atol=1e-9)


def test_a_version_1_file_of_logistic_variants_still_loads(tmp_path, real_developer):
    doc = small_scorer(real_developer).to_json()
    doc["format_version"] = 1
    for variant in doc["variants"].values():
        del variant["kind"]
    (tmp_path / "v1.json").write_text(json.dumps(doc))
    assert set(load_scorer(tmp_path / "v1.json").variants) == set(VARIANTS)


def test_bad_tree_files_are_refused_in_one_line_naming_the_file(tmp_path, real_developer):
    _, path = tree_file(tmp_path, real_developer)
    doc = json.loads(path.read_text())
    lines = doc["variants"]["lines"]
    tree = lines["trees"][0]

    def with_tree(**change):
        return json.dumps(doc | {"variants": doc["variants"] | {"lines": lines | {"trees": [tree | change]}}})

    def with_lines(**change):
        return json.dumps(doc | {"variants": doc["variants"] | {"lines": lines | change}})

    n = len(tree["leaf"])
    bad = {"unknown kind": with_lines(kind="forest"),
           "trees in a version 1 file": json.dumps(doc | {"format_version": 1}),
           "no trees": with_lines(trees=[]), "too many trees": with_lines(trees=[tree] * (MAX_TREES + 1)),
           "baseline NaN": with_lines(baseline=float("nan")), "tree not an object": with_lines(trees=[[1, 2]]),
           "missing array": json.dumps(doc | {"variants": {"lines": lines | {"trees": [{"leaf": tree["leaf"]}]}}}),
           "short array": with_tree(value=tree["value"][:-1]),
           "feature out of range": with_tree(feature=[99] * n), "feature a bool": with_tree(feature=[True] * n),
           "feature a float": with_tree(feature=[0.5] * n), "threshold NaN": with_tree(threshold=[float("nan")] * n),
           "leaf not bool": with_tree(leaf=[0] * n), "a loop": with_tree(left=[0] * n),
           "child past the end": with_tree(right=[n] * n)}
    for name, text in bad.items():
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(DataError) as error:
            load_scorer(tmp_path / "bad.json")
        assert str(tmp_path / "bad.json") in str(error.value) and "\n" not in str(error.value), name


def test_the_shipped_scorer_loads_and_scores_a_contradicted_record_higher():
    scorer = load_scorer(DEFAULT_SCORER)
    assert set(scorer.variants) == set(VARIANTS) and 0 < scorer.prior < 1
    assert scorer.training["photos"] >= 500 and "cross_validation" in scorer.training
    space = LabelSpace.from_names(scorer.training["labels"])
    dist = CountDistribution.of(space, peaked(space, [2, 2]))
    right, wrong = (line("a", 2),), (line("a", 2), line("b", 7))
    assert np.diff(scorer.score("lines", dist, [right, wrong]))[0] > 0
    assert np.diff(scorer.score("totals", dist, [(), ()], totals=[2, 9]))[0] > 0


# ---------------------------------------------------------------- explanations and score_bins


def test_explanations_say_what_is_wrong_in_plain_words():
    records = [(), (line("a", 3), line("b", 6)), (line("a", 9),), tuple(line(s, 1) for s in "abcde"),
               (line("big", 4, 14.0),), (line("a", 2, None, None),), (line("a", 3),)]
    shown = [3, 0, 2, 2, 4, 2, 3]
    probs = peaked(WHOLE, shown, 0.9)
    probs[3] = 0.55 * peaked(WHOLE, [2], 1.0)[0] + 0.45 * peaked(WHOLE, [5], 1.0)[0]  # 5 is likely, fewer than 5 likelier
    text = explain(CountDistribution.of(WHOLE, probs), records, totals(records), shown)
    assert text[0].startswith("recorded empty; the photo shows about 3 items")
    assert text[1].startswith("2 SKU lines recorded (9 items); the bin looks empty")
    assert "the photo shows about 2 items; the record says 9" in text[2]
    assert text[3] == "5 SKU lines recorded; the photo shows about 2 items"
    apart = explain(CountDistribution.of(WHOLE, peaked(WHOLE, [2], 0.9)), records[3:4], [5], [2])
    assert apart == ["the photo shows about 2 items; the record says 5 on 5 SKU lines"]
    empty = explain(CountDistribution.of(WHOLE, peaked(WHOLE, [0], 0.4)), [(line("a", 3),)], [3], [0])
    assert empty == ["the photo shows no items; the record says 3"]
    assert "a 14-inch item recorded 4 times; at most 1 fit" in text[4]
    assert text[5].endswith("lines without dimensions: volume not checked")
    assert text[6] == "the photo agrees with the record (3 items); no strong sign of an error"
    many = explain(CountDistribution.of(WHOLE, peaked(WHOLE, [21], 0.9)), [(line("a", 2),)], [2], [21])
    assert "the photo shows more than 20 items; the record says 2" in many[0]
    crowded = explain(CountDistribution.of(WHOLE, peaked(WHOLE, [21], 0.9)), [(line("a", 25, 1.0),)], [25], [21])
    assert crowded == ["the photo agrees with the record (25 items); no strong sign of an error"]  # 25 reads as "21+"


def test_score_bins_scores_lines_and_totals_only_bins_on_one_scale_and_explains_each(mirror):
    _, truth = mirror_truth(mirror, every=10, limit=600)
    shown = np.clip(totals(truth) + np.random.default_rng(0).choice([-1, 0, 1], len(truth), p=[0.15, 0.7, 0.15]), 0, None)
    scorer = small_scorer(Developer(CountDistribution.of(WHOLE, peaked(WHOLE, shown, 0.6)), truth, {}))
    prediction = Prediction.of(WHOLE, peaked(WHOLE, [2, 2, 2, 2], 0.85))
    snapshots = [SnapshotIn("a", "a.jpg", 2, lines=(line("x", 2),)), SnapshotIn("b", "b.jpg", 9, lines=(line("x", 2), line("y", 7))),
                 SnapshotIn("c", "c.jpg", 2), SnapshotIn("d", "d.jpg", 9)]
    auto = score_bins(prediction, snapshots, scorer=scorer)
    assert auto["score"][1] > auto["score"][0] + 0.2 and auto["score"][3] > auto["score"][2] + 0.2
    assert ((0 <= auto["score"]) & (auto["score"] <= 1)).all() and len(auto["explanation"]) == 4
    lines_only = scorer.score("lines", CountDistribution.of(WHOLE, prediction.probabilities[:2]), [s.lines for s in snapshots[:2]])
    assert auto["score"][:2] == pytest.approx(lines_only)  # a record with lines: the lines variant; without: totals
    assert "the record says 9" in auto["explanation"][3]
    assert score_bins(prediction, snapshots)["score"][3] > score_bins(prediction, snapshots)["score"][2]  # the shipped scorer
    mismatch = score_bins(prediction, snapshots, "mismatch")
    assert mismatch["score"] == pytest.approx(1 - auto["p_record"]) and mismatch["explanation"] == auto["explanation"]
    with pytest.raises(ValueError):
        score_bins(prediction, snapshots, "entropy")


# ---------------------------------------------------------------- bintally audit fit-scorer


def test_fit_scorer_writes_a_scorer_that_loads(tmp_path, tiny_artifact, tiny_manifest):
    out = tmp_path / "scorer.json"
    result = run_cli("audit", "fit-scorer", "--model", tiny_artifact.path, "--data", tiny_manifest, "--out", out,
                     "--split", "train+val", "--seeds", "2", "--folds", "2", "--workers", "0", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "lines-no-photo" in result.stdout and "mismatch" in result.stdout and "lines-hgb" in result.stdout
    scorer = load_scorer(out)
    kinds = scorer.training["kinds"]
    cv = scorer.training["cross_validation"]
    for v in VARIANTS:  # the kind with the better AUC on the default mix was fitted
        assert kinds[v] == ("trees" if cv[f"{v}-hgb"]["default"]["roc_auc"]["mean"] > cv[v]["default"]["roc_auc"]["mean"] else "logistic")
        assert isinstance(scorer.variants[v], TreeScorer) == (kinds[v] == "trees")
    assert f"{v} {kinds[v]}" in result.stdout
    assert set(scorer.variants) == set(VARIANTS) and scorer.training["splits"] == ["train", "val"]
    assert scorer.training["cross_validation"]["lines"]["default"]["roc_auc"]["mean"] > 0.5
    again = run_cli("audit", "fit-scorer", "--model", tiny_artifact.path, "--data", tiny_manifest, "--out", out)
    assert_one_line_error(again, str(out), "exists: pass --overwrite")


@pytest.mark.parametrize("args, fragments", [
    (["--split", "test"], ["test split is for the final score"]),
    (["--split", "everything"], ["unknown split 'everything'"]),
    (["--data", "{tmp}/none.parquet"], ["none.parquet"]),
    (["--data", "{tmp}/plain.csv"], ["plain.csv", "meta_path"]),
    (["--model", "{tmp}/no-model"], ["no-model"]),
    (["--out", "{tmp}/scorer.txt"], ["scorer.txt", ".json"]),
    (["--seeds", "0"], ["--seeds"]),
])
def test_fit_scorer_refuses_bad_input_in_one_line(tmp_path, tiny_artifact, tiny_manifest, args, fragments):
    image = sorted((Path(__file__).resolve().parents[1] / "bintally" / "sample" / "bin-images").glob("*.jpg"))[0]
    (tmp_path / "plain.csv").write_text(f"path,count\n{image},3\n")
    given = dict(zip(args[::2], args[1::2]))
    options = {"--model": str(tiny_artifact.path), "--data": str(tiny_manifest), "--out": str(tmp_path / "s.json")} | given
    result = run_cli("audit", "fit-scorer", *[x.format(tmp=tmp_path) for kv in options.items() for x in kv], "--no-progress")
    assert_one_line_error(result, *[f.format(tmp=tmp_path) for f in fragments])
    assert not (tmp_path / "s.json").exists()
