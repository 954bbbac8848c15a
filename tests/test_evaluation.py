"""`bintally evaluate`: metrics, saved predictions, the report and bad input, on real photos."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bintally.cli import app
from bintally.data import read_manifest, split_manifest, write_manifest
from bintally.data.split import SplitConfig
from bintally.errors import DataError
from bintally.evaluation import evaluate, evaluate_model, evaluate_predictions, evaluate_saved, load_predictions
from bintally.evaluation.metrics import bootstrap_intervals, calibration, count_metrics, per_class_metrics
from bintally.labels import LabelSpace
from bintally.models.artifact import read_artifact
from bintally.training import train
from tests.training_helpers import tiny_config

REQUIRED_KEYS = ["n", "accuracy", "n_0_5", "accuracy_0_5", "rmse_0_5", "n_1_5", "accuracy_1_5", "rmse_1_5"]


@pytest.fixture(scope="session")
def tiny_model(tiny_manifest, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(tiny_manifest, run, mode="frozen", head="ordinal", epochs=2))
    return run


# ---------------------------------------------------------------- metrics


def test_overflow_prediction_is_wrong_on_0_5_and_counts_as_6():
    true = np.array([0, 3, 5, 6, 2])
    pred = np.array([0, 3, 6, 6, 6])  # 5 -> "6+" and 2 -> "6+" are wrong on 0-5
    m = count_metrics(true, pred, max_count=5)
    assert (m["n"], m["n_0_5"], m["n_1_5"]) == (5, 4, 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["accuracy_0_5"] == pytest.approx(2 / 4)
    assert m["rmse_0_5"] == pytest.approx(np.sqrt((1 + 16) / 4))
    assert m["within1_0_5"] == pytest.approx(3 / 4)
    assert m["accuracy_1_5"] == pytest.approx(1 / 3)


def test_relative_error_and_the_counts_above_5_by_hand():
    true = np.array([0, 2, 8, 40, 6])
    pred = np.array([1, 2, 6, 21, 6])  # 40 predicted "21+" (21 items): an error of 19
    m = count_metrics(true, pred, max_count=20)
    assert m["rel_error"] == pytest.approx((1 / 1 + 0 + 2 / 8 + 19 / 40 + 0) / 5)  # a bin of 0 divides by 1
    assert m["mae"] == pytest.approx(22 / 5) and m["accuracy"] == pytest.approx(2 / 5)
    assert (m["n_0_20"], m["n_0_5"], m["n_6_up"]) == (4, 2, 3)
    assert m["accuracy_6_up"] == pytest.approx(1 / 3) and m["within1_6_up"] == pytest.approx(1 / 3)
    assert m["mae_6_up"] == pytest.approx(21 / 3) and m["rmse_6_up"] == pytest.approx(np.sqrt((4 + 361) / 3))
    assert m["rel_error_6_up"] == pytest.approx((2 / 8 + 19 / 40) / 3) and m["rel_error_0_5"] == pytest.approx(1 / 2)
    assert set(bootstrap_intervals(true, pred, 20, resamples=20)) >= {"rel_error", "rel_error_6_up", "accuracy_6_up"}
    up_to_5 = count_metrics(np.array([0, 3, 5]), np.array([0, 4, 6]))
    assert "n_6_up" not in up_to_5 and up_to_5["rel_error"] == pytest.approx((0 + 1 / 3 + 1 / 5) / 3)


def whole_range_frame(true_count, predicted_label) -> pd.DataFrame:
    """Predictions of a 0-20 + "21+" model, each photo's probability all on its predicted class."""
    space = LabelSpace(0, 20, True)
    probs = np.eye(space.n_classes)[predicted_label]
    return pd.DataFrame({"id": [str(i) for i in range(len(true_count))], "true_count": true_count,
                         "true_label": space.class_of(true_count), "predicted_label": predicted_label,
                         **{f"prob_{name}": probs[:, i] for i, name in enumerate(space.names)}})


def test_a_bin_above_the_overflow_class_is_scored_against_its_real_count(tmp_path):
    frame = whole_range_frame([40, 3, 7, 0], [21, 3, 6, 0])
    result = evaluate_predictions(frame, resamples=20)
    m = result.metrics
    assert m["accuracy"] == pytest.approx(2 / 4) and m["mae"] == pytest.approx(20 / 4)  # 40 as "21+" is 19 off, 7 as 6 one
    assert m["rel_error"] == pytest.approx((19 / 40 + 1 / 7) / 4) and m["mae_6_up"] == pytest.approx(20 / 2)
    assert m["confusion"]["matrix"][21][21] == 1  # the class is right: the confusion matrix and per-class stay on classes
    assert result.info["errors_against"] == "the photos' real counts"
    clipped = evaluate_predictions(frame.drop(columns="true_count"), resamples=20)
    assert clipped.metrics["accuracy"] == pytest.approx(3 / 4) and clipped.metrics["mae"] == pytest.approx(1 / 4)  # 40 is "21+"
    assert result.subset_names() == [("all", ""), ("0-20", "_0_20"), ("1-20", "_1_20"), ("0-5", "_0_5"), ("1-5", "_1_5"),
                                     ("6+", "_6_up")]
    page = result.write_report(tmp_path / "report").read_text()
    assert "rel. error" in page and "counts 6+" in page and "a bin of 42 predicted \"21+\" is an error\nof 21" in page


def test_saved_real_counts_are_checked_against_their_labels(tmp_path):
    frame = whole_range_frame([40, 3, 7, 0], [21, 3, 6, 0])
    frame.to_csv(tmp_path / "good.csv", index=False)
    assert load_predictions(tmp_path / "good.csv")["true_count"].tolist() == [40, 3, 7, 0]
    frame.assign(true_count=[40, 4, 7, 0]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="bad.csv: column true_count, line 3: 4 does not match the row's true_label"):
        load_predictions(tmp_path / "bad.csv")
    frame.assign(true_count=[40, 3, 7.5, 0]).to_csv(tmp_path / "half.csv", index=False)
    with pytest.raises(DataError, match=r"half.csv: column true_count, line 4: 7.5 is not a count"):
        load_predictions(tmp_path / "half.csv")


def test_cli_prints_relative_error_and_the_counts_above_5(tmp_path):
    whole_range_frame([40, 3, 7, 0, 12], [21, 3, 6, 0, 12]).to_csv(tmp_path / "p.csv", index=False)
    out = CliRunner().invoke(app, ["evaluate", "--predictions", str(tmp_path / "p.csv"), "--bootstrap", "20"])
    assert out.exit_code == 0, out.output
    lines = {line.split(":")[0].strip(): line for line in out.output.splitlines() if ": n=" in line}
    assert list(lines) == ["all", "0-20", "1-20", "0-5", "1-5", "6+"]
    assert "n=3 " in lines["6+"] and "MAE 6.667" in lines["6+"] and "rel. error 0.206" in lines["6+"]  # (19/40 + 1/7 + 0) / 3


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_photos():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 6, 2000)
    pred = np.where(rng.random(2000) < 0.6, true, rng.integers(0, 6, 2000))
    small = bootstrap_intervals(true[:100], pred[:100], resamples=500)
    large = bootstrap_intervals(true, pred, resamples=500)
    accuracy = count_metrics(true, pred)["accuracy"]
    assert large["accuracy"][0] < accuracy < large["accuracy"][1]
    assert large["accuracy"][1] - large["accuracy"][0] < small["accuracy"][1] - small["accuracy"][0]
    assert bootstrap_intervals(true, pred, resamples=200) == bootstrap_intervals(true, pred, resamples=200)


def test_calibration_error_separates_honest_from_overconfident_probabilities():
    rng = np.random.default_rng(0)
    n = 5000
    confidence = rng.uniform(0.2, 1.0, n)
    true = np.zeros(n, int)
    pred = np.where(rng.random(n) < confidence, 0, 1)  # right with exactly the stated probability
    honest = np.stack([confidence, 1 - confidence], 1)
    honest[pred == 1] = honest[pred == 1][:, ::-1]
    overconfident = np.where(honest == honest.max(1, keepdims=True), 0.99, 0.01)
    assert calibration(honest, true, pred)["ece"] < 0.03
    assert calibration(overconfident, true, pred)["ece"] > 0.2


def test_per_class_precision_and_recall():
    rows = per_class_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 1], ["0", "1", "2"])
    assert rows[0]["precision"] == 1 and rows[0]["recall"] == 0.5
    assert rows[1]["precision"] == 0.5 and rows[1]["recall"] == 1
    assert rows[2]["n"] == 1 and rows[2]["recall"] == 0 and rows[2]["mae"] == 1


# ---------------------------------------------------------------- a real model on real photos


def test_bucket_folder_without_split_evaluates_every_photo(tiny_model, small_bucket, tmp_path):
    result = evaluate(model=tiny_model, data=small_bucket, split="test", json_out=tmp_path / "m.json",
                      report=tmp_path / "report", save_to=tmp_path / "p.csv", workers=0, progress=False, resamples=200)
    saved = json.loads((tmp_path / "m.json").read_text())
    assert all(k in saved for k in REQUIRED_KEYS)
    assert saved["n"] == len(list((small_bucket / "bin-images").glob("*.jpg")))
    assert saved["info"]["split"].startswith("all")
    counts = pd.Series([json.loads(p.read_text())["EXPECTED_QUANTITY"] for p in sorted((small_bucket / "metadata").glob("*.json"))])
    assert saved["n_0_5"] == int((counts <= 5).sum())
    matrix = np.array(saved["confusion"]["matrix"])
    frame = result.predictions  # the matrix is over classes, accuracy over counts ("6+" for a bin of 9 is a right class, a wrong count)
    assert matrix.sum() == saved["n"] and np.trace(matrix) == (frame["true_label"] == frame["predicted_label"]).sum()
    assert round(saved["accuracy"] * saved["n"]) == (frame["true_count"] == frame["predicted_count"]).sum()
    for name in ("index.html", "confusion.png", "reliability.png", "per_class.png", "counts.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000
    page = (tmp_path / "report" / "index.html").read_text()
    assert "55.7%" in page and "0.930" in page and "not directly comparable" in page
    assert np.allclose(result.predictions.filter(like="prob_").sum(axis=1), 1, atol=1e-4)


def test_class_folder_dataset_is_evaluated_with_counts_from_folder_names(tiny_model, mirror, tmp_path):
    photos = {"0": ["00101"], "2": ["00100", "00102"], "7": ["00106"]}  # folder names are the counts; 7 lands in "6+"
    for count, ids in photos.items():
        (tmp_path / "folders" / count).mkdir(parents=True)
        for i in ids:
            shutil.copy(mirror / "bin-images" / f"{i}.jpg", tmp_path / "folders" / count)
    result = evaluate_model(tiny_model, tmp_path / "folders", workers=0, progress=False, resamples=50)
    frame = result.predictions.set_index("id")
    assert frame.loc["00106", "true_count"] == 7 and frame.loc["00106", "true_label"] == 6
    assert (result.metrics["n"], result.metrics["n_0_5"], result.metrics["n_1_5"]) == (4, 3, 2)


def test_saved_predictions_recompute_the_same_metrics(tiny_model, tiny_manifest, tmp_path):
    first = evaluate_model(tiny_model, tiny_manifest, split="val", workers=0, progress=False, resamples=200)
    model = read_artifact(tiny_model)
    assert (first.info["model_version"], first.info["backend"], first.info["decode"]) == (model.version, "torch", "median")
    for suffix in (".csv", ".parquet"):
        path = tmp_path / f"predictions{suffix}"
        evaluate(model=tiny_model, data=tiny_manifest, split="val", save_to=path, workers=0, progress=False, resamples=200)
        again = evaluate_saved(path, resamples=200)
        assert again.metrics == first.metrics
    assert load_predictions(tmp_path / "predictions.csv")["id"].tolist() == first.predictions["id"].tolist()


def test_cli_evaluate_writes_json_and_recomputes_from_predictions(tiny_model, tiny_manifest, tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["evaluate", "--model", str(tiny_model), "--data", str(tiny_manifest), "--split", "val",
                              "--json", str(tmp_path / "a.json"), "--save-predictions", str(tmp_path / "p.parquet"),
                              "--workers", "0", "--no-progress", "--bootstrap", "100"])
    assert out.exit_code == 0, out.output
    assert "0-5: n=" in out.output
    out = runner.invoke(app, ["evaluate", "--predictions", str(tmp_path / "p.parquet"), "--json", str(tmp_path / "b.json"),
                              "--bootstrap", "100"])
    assert out.exit_code == 0, out.output
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert {k: a[k] for k in REQUIRED_KEYS} == {k: b[k] for k in REQUIRED_KEYS}


def test_a_model_trained_on_counts_0_5_only_is_scored_on_every_photo(tiny_manifest, tmp_path):
    train(tiny_config(tiny_manifest, tmp_path / "run", mode="frozen", head="ordinal", epochs=1, overflow="exclude"))
    saved = read_artifact(tmp_path / "run")  # model.json and safetensors: a model loads without running code
    assert saved.labels.names == ["0", "1", "2", "3", "4", "5"] and not saved.model.overflow
    result = evaluate_model(tmp_path / "run", tiny_manifest, split="val", workers=0, progress=False, resamples=50)
    frame = result.predictions
    assert (frame["true_label"] == 6).any() and not (frame["predicted_label"] == 6).any()
    assert (frame["prob_6+"] == 0).all() and result.metrics["n"] > result.metrics["n_0_5"]


# ---------------------------------------------------------------- bad input


def test_a_model_is_scored_on_the_photos_of_a_split_made_with_another_label_space(tiny_model, tiny_manifest, tmp_path):
    """The split decides which photos are scored; the model's own label space decides how (issue 10: a 0-12 model on a 0-5 split)."""
    df = split_manifest(read_manifest(tiny_manifest).drop(columns=["split", "label"]), SplitConfig(max_count=3))
    path = write_manifest(df, tmp_path / "max3.parquet", info=df.attrs["info"])
    result = evaluate_model(tiny_model, path, split="val", workers=0, progress=False, resamples=10)
    val = df[df["split"] == "val"]
    assert result.metrics["n"] == len(val) and result.metrics["n_0_5"] == int((val["count"] <= 5).sum())
    assert sorted(result.predictions["true_count"]) == sorted(val["count"])


def test_empty_evaluation_set_is_refused(tiny_model, tiny_manifest, tmp_path):
    with pytest.raises(DataError, match="no photos to evaluate"):
        evaluate_model(tiny_model, tiny_manifest, split="test", workers=0, progress=False)  # tiny has no test split
    broken = tmp_path / "broken"
    (broken / "bin-images").mkdir(parents=True)
    (broken / "metadata").mkdir()
    (broken / "bin-images" / "1.jpg").write_bytes(b"not a jpeg")
    (broken / "metadata" / "1.json").write_text('{"EXPECTED_QUANTITY": 2}')
    with pytest.raises(DataError, match="no photos to evaluate"):
        evaluate_model(tiny_model, broken, workers=0, progress=False)


def test_predictions_file_with_missing_columns_is_refused(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"id": ["1"], "true_label": [1], "prob_0": [0.5], "prob_1": [0.5]}).to_csv(path, index=False)
    out = CliRunner().invoke(app, ["evaluate", "--predictions", str(path)], standalone_mode=False, catch_exceptions=True)
    assert isinstance(out.exception, DataError) and "missing columns: predicted_label" in str(out.exception)
    with pytest.raises(DataError, match="no such predictions file"):
        evaluate_saved(tmp_path / "missing.csv")

