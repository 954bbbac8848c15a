"""ABID's quantity verification ("is there quantity q of ASIN X in this bin?"): the questions from real metadata, the
answer probability on hand-built distributions, the threshold, and `bintally evaluate --verify-quantity` end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bintally.data import build_manifest, write_manifest
from bintally.errors import DataError
from bintally.evaluation import evaluate_model
from bintally.evaluation.verification import answer_probabilities, best_threshold, renumber, verification_metrics, verification_questions
from bintally.labels import LabelSpace, count_probability, tail_mean_excess, tail_ratio
from bintally.paths import SAMPLE_DIR
from tests.cli_helpers import assert_one_line_error, run_cli

FAST = ["--no-progress", "--workers", "0", "--bootstrap", "20"]


def metadata_photos(folder, ids) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "meta_path": [str(folder / "metadata" / f"{i}.json") for i in ids]})


def recorded_lines(meta_path) -> dict[str, int]:
    doc = json.loads(open(meta_path).read())
    return {line["asin"]: line["quantity"] for line in (doc.get("BIN_FCSKU_DATA") or {}).values()}


# ---------------------------------------------------------------- the questions


def test_questions_ask_each_recorded_line_once_right_and_once_wrong(mirror):
    ids = [f"{i:05d}" for i in range(100, 140)] + ["1", "10", "100", "121"]  # the last four bins are empty
    photos = metadata_photos(mirror, ids)
    questions = verification_questions(photos, seed=3)
    records = [recorded_lines(p) for p in photos["meta_path"]]
    assert sum(map(len, records)) > 40 and sum(not r for r in records) >= 4
    assert len(questions) == 2 * sum(map(len, records))
    assert set(questions["photo"]) == {i for i, r in enumerate(records) if r}  # bins without lines ask nothing
    for (photo, sku), pair in questions.groupby(["photo", "sku"]):
        qty, total = records[photo][sku], sum(records[photo].values())
        right, wrong = pair[pair["truth"]], pair[~pair["truth"]]
        assert len(right) == len(wrong) == 1
        assert right["asked"].item() == qty == right["true_qty"].item() == wrong["true_qty"].item()
        assert wrong["asked"].item() != qty and 1 <= wrong["asked"].item() <= max(5, qty + 3)
        assert (pair["rest"] == total - qty).all() and (pair["id"] == ids[photo]).all()


def test_questions_are_reproducible_by_seed_and_a_bins_questions_ignore_the_other_photos(mirror):
    photos = metadata_photos(mirror, [f"{i:05d}" for i in range(100, 160)])
    first = verification_questions(photos, seed=7)
    pd.testing.assert_frame_equal(first, verification_questions(photos, seed=7))
    other = verification_questions(photos, seed=8)
    assert (first["asked"] != other["asked"]).any() and (first["truth"] == other["truth"]).all()
    assert (first.loc[first["truth"], "asked"] == other.loc[other["truth"], "asked"]).all()
    alone = verification_questions(photos.iloc[[30]].reset_index(drop=True), seed=7)
    assert not alone.empty
    same = first[first["photo"] == 30].reset_index(drop=True).assign(photo=0)
    pd.testing.assert_frame_equal(alone, same)


def test_negative_quantities_spread_over_the_documented_range(mirror):
    photos = metadata_photos(mirror, [f"{i:05d}" for i in range(100, 400)])
    questions = verification_questions(photos)
    wrong = questions[~questions["truth"] & (questions["true_qty"] == 1)]
    assert len(wrong) > 100 and set(wrong["asked"]) == {2, 3, 4, 5}  # 1..max(5, 1+3) without 1


def test_photos_without_metadata_ask_nothing_and_the_sample_has_questions():
    photos = pd.DataFrame({"id": ["a", "b"], "meta_path": [None, float("nan")]})
    assert verification_questions(photos).empty
    sample = metadata_photos(SAMPLE_DIR, [p.stem for p in sorted((SAMPLE_DIR / "metadata").glob("*.json"))[:20]])
    assert len(verification_questions(sample)) > 20


def test_bad_metadata_is_one_error_naming_the_file(mirror, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"EXPECTED_QUANTITY": 2, "BIN_FCSKU_DATA": {"B00X": {"asin": "B00X", "quantity": "many"}}}))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    for path, problem in ((tmp_path / "gone.json", "no such metadata file"), (broken, "quantity 'many' is not a whole number"),
                          (listed, "found a list")):
        with pytest.raises(DataError) as error:
            verification_questions(pd.DataFrame({"id": ["x"], "meta_path": [str(path)]}))
        assert str(error.value).startswith(str(path)) and problem in str(error.value)


# ---------------------------------------------------------------- the answer


def test_count_probability_spreads_the_overflow_class_as_a_geometric_tail():
    space = LabelSpace(0, 5, overflow=True)
    probs = np.array([[0.1, 0.1, 0.2, 0.2, 0.1, 0.1, 0.2]])
    counts = [0, 3, 5, 6, 7, 8]
    got = [count_probability(probs, space, [c], ratio=0.8)[0] for c in counts]
    assert got == pytest.approx([0.1, 0.2, 0.1, 0.2 * 0.2, 0.2 * 0.2 * 0.8, 0.2 * 0.2 * 0.64])
    r = tail_ratio(5)  # the default: a mean excess of tail_mean_excess(5) items past 6
    assert count_probability(probs, space, [7])[0] == pytest.approx(0.2 * (1 - r) * r)
    assert 1 / (1 - r) - 1 == pytest.approx(tail_mean_excess(5))
    tail = count_probability(np.repeat(probs, 400, 0), space, np.arange(6, 406))
    assert tail.sum() == pytest.approx(0.2)  # the tail holds the overflow class's probability, no more
    assert count_probability(probs, space, [9], ratio=0.5)[0] == pytest.approx(0.2 * 0.5 * 0.5 ** 3)
    closed = LabelSpace(1, 5, overflow=False)
    assert count_probability(np.array([[0.2] * 5]), closed, [0])[0] == 0  # below min_count
    assert count_probability(np.array([[0.2] * 5]), closed, [6])[0] == 0  # above max_count without overflow


def test_answer_is_the_probability_of_the_asked_quantity_plus_the_rest_of_the_record():
    space = LabelSpace(0, 5, overflow=True)
    probs = np.array([[0.05, 0.05, 0.1, 0.5, 0.1, 0.1, 0.1],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.4, 0.6]])
    questions = pd.DataFrame({"photo": [0, 0, 1, 1], "asked": [2, 4, 1, 3], "rest": [1, 1, 4, 4]})
    r = tail_ratio(5)
    assert answer_probabilities(questions, probs, space) == pytest.approx([0.5, 0.1, 0.4, 0.6 * (1 - r) * r])
    assert answer_probabilities(questions.iloc[:0], probs, space).shape == (0,)


def test_threshold_is_the_most_accurate_and_of_equals_the_nearest_to_one_half():
    truth = np.array([True, True, False, False])
    assert best_threshold(np.array([0.9, 0.6, 0.4, 0.2]), truth) == 0.5  # every threshold in [0.4, 0.6) is right
    assert best_threshold(np.array([0.3, 0.25, 0.1, 0.05]), truth) == 0.1  # yes above 0.1: all four right
    assert best_threshold(np.array([0.2, 0.8, 0.7, 0.1]), truth) == 0.7  # 0.1 and 0.7 get 3 of 4 right; 0.7 is nearer 0.5
    assert best_threshold(np.empty(0), np.empty(0, bool)) == 0.5


def test_verification_metrics_by_hand():
    questions = pd.DataFrame({"photo": [0, 0, 1, 1], "truth": [True, False, True, False]})
    m = verification_metrics(questions, np.array([0.9, 0.4, 0.3, 0.2]), 0.5, "default")
    assert (m["questions"], m["positives"], m["bins"]) == (4, 2, 2)
    assert m["accuracy"] == pytest.approx(3 / 4)  # yes, no, no, no: only the 0.3 positive is answered wrong
    assert m["roc_auc"] == pytest.approx(3 / 4)  # 0.9 beats both negatives, 0.3 beats 0.2 but not 0.4
    one_sided = verification_metrics(questions.assign(truth=True), np.array([0.9, 0.4, 0.3, 0.2]), 0.5, "default")
    assert np.isnan(one_sided["roc_auc"])


def test_renumber_follows_the_photos_that_were_kept():
    questions = pd.DataFrame({"photo": [0, 0, 2, 3, 3], "asked": [1, 2, 3, 4, 5]})
    kept = renumber(questions, [0, 3])
    assert kept["photo"].tolist() == [0, 0, 1, 1] and kept["asked"].tolist() == [1, 2, 4, 5]


# ---------------------------------------------------------------- end to end


@pytest.fixture
def split_bucket(small_bucket, tmp_path):
    """The 30 real photos of small_bucket as a split manifest: 00100-00109 are val, the others test."""
    df = build_manifest(small_bucket, progress=False)
    df["label"] = LabelSpace().label_of(df["count"])
    df["split"] = np.where(df["id"].isin([f"{i:05d}" for i in range(100, 110)]), "val", "test")
    return write_manifest(df, tmp_path / "split.parquet", info=df.attrs.get("info", {}))


def test_cli_verify_quantity_chooses_the_threshold_on_val_and_scores_test(tiny_artifact, split_bucket, tmp_path):
    result = run_cli("evaluate", "--model", tiny_artifact.path, "--data", split_bucket, "--split", "test", "--verify-quantity",
                     "--json", tmp_path / "m.json", "--report", tmp_path / "report", *FAST)
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "m.json").read_text())["quantity_verification"]
    manifest = pd.read_parquet(split_bucket)
    lines = {split: sum(len(recorded_lines(p)) for p in group["meta_path"]) for split, group in manifest.groupby("split")}
    assert saved["questions"] == 2 * lines["test"] and saved["positives"] == lines["test"]
    assert saved["threshold_from"] == f"val ({2 * lines['val']} questions)"
    assert 0 <= saved["accuracy"] <= 1 and 0 <= saved["roc_auc"] <= 1 and saved["seed"] == 0
    assert f"quantity verification: {saved['questions']} questions on {saved['bins']} bins" in result.stdout
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Quantity verification" in page and f"val ({2 * lines['val']} questions)" in page


def test_verification_uses_the_evaluated_probabilities_and_the_val_threshold(tiny_artifact, split_bucket):
    test = evaluate_model(tiny_artifact.path, split_bucket, split="test", workers=0, progress=False, resamples=20,
                          verify=True, seed=5)
    questions, frame = test.questions, test.predictions
    totals = questions["asked"] + questions["rest"]
    within = totals <= 5
    expected = [frame.loc[photo, f"prob_{total}"] for photo, total in zip(questions["photo"][within], totals[within])]
    assert questions["p_yes"][within].to_numpy() == pytest.approx(np.array(expected), abs=1e-12)
    assert (questions["id"] == frame.loc[questions["photo"], "id"].to_numpy()).all()
    threshold = test.metrics["quantity_verification"]["threshold"]
    assert (questions["answer"] == (questions["p_yes"] > threshold)).all()
    val = evaluate_model(tiny_artifact.path, split_bucket, split="val", workers=0, progress=False, resamples=20,
                         verify=True, seed=5)
    assert val.metrics["quantity_verification"]["threshold_from"].startswith("default")
    assert threshold == pytest.approx(best_threshold(val.questions["p_yes"].to_numpy(), val.questions["truth"].to_numpy()),
                                      abs=1e-6)


def test_missing_metadata_and_verify_without_a_model_are_one_line(tiny_artifact, small_bucket, tmp_path):
    manifest = write_manifest(build_manifest(small_bucket, progress=False), tmp_path / "m.parquet")
    (small_bucket / "metadata" / "00105.json").unlink()
    assert_one_line_error(run_cli("evaluate", "--model", tiny_artifact.path, "--data", manifest, "--verify-quantity", *FAST),
                          "00105.json", "no such metadata file")
    assert_one_line_error(run_cli("evaluate", "--predictions", tmp_path / "p.csv", "--verify-quantity", *FAST),
                          "--verify-quantity needs --model")
