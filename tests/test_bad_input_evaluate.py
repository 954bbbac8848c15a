"""Bad input to `bintally evaluate` and `bintally predict`: one line naming the file and the problem, exit 2,
never a traceback; a photo that cannot be read is reported on its own line and the rest are counted."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load

from bintally.data import index_to_manifest, read_manifest
from bintally.errors import ConfigError, DataError
from bintally.evaluation import evaluate, evaluate_model, evaluate_predictions, load_predictions
from bintally.evaluation.evaluate import evaluation_photos
from bintally.inference import Counter
from bintally.labels import LabelSpace
from bintally.paths import SAMPLE_DIR
from bintally.training import train
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.conftest import copy_bucket
from tests.helpers import png_bomb
from tests.training_helpers import tiny_config

SAMPLE_PHOTOS = sorted((SAMPLE_DIR / "bin-images").glob("*.jpg"))
FAST = ["--no-progress", "--workers", "0", "--bootstrap", "20"]


@pytest.fixture(scope="module")
def run(tiny_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad-input") / "run"
    train(tiny_config(tiny_manifest, out, max_steps=1, epochs=1))
    return out


@pytest.fixture(scope="module")
def saved_model(run) -> dict:
    """The run's model.json, as written by training."""
    return json.loads((run / "model" / "model.json").read_text())


def unusual_images(folder) -> list:
    """Real photos in modes a user may have: RGBA PNG, CMYK JPEG, 16-bit grey PNG, palette PNG with transparency."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(SAMPLE_PHOTOS[0])
    paths = [folder / "alpha.png", folder / "cmyk.jpg", folder / "grey16.png", folder / "palette.png"]
    photo.convert("RGBA").save(paths[0])
    photo.convert("CMYK").save(paths[1])
    Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 256).save(paths[2])
    photo.convert("P").save(paths[3], transparency=0)
    return paths


def bad_images(folder) -> dict:
    """Name -> (path, what the error line must say)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = SAMPLE_PHOTOS[1].read_bytes()
    cases = {
        "folder": (folder / "a-folder.jpg", "is a folder"),
        "missing": (folder / "missing.jpg", "no such image"),
        "truncated": (folder / "truncated.jpg", "corrupt image"),
        "text": (folder / "notes.jpg", "not an image"),
        "bomb": (folder / "bomb.png", "image too large"),
        "empty": (folder / "empty.jpg", "not an image"),
    }
    cases["folder"][0].mkdir()
    cases["truncated"][0].write_bytes(data[: len(data) // 2])
    cases["text"][0].write_text("these are not pixels\n")
    cases["bomb"][0].write_bytes(png_bomb(30_000, 30_000))
    cases["empty"][0].write_bytes(b"")
    return cases


# ---------------------------------------------------------------- loading a model


def test_real_model_loads_without_running_code_from_any_path_naming_it(run):
    weights = next((run / "model").glob("weights-*.safetensors"))
    data = weights.read_bytes()
    header = json.loads(data[8: 8 + struct.unpack("<Q", data[:8])[0]])  # safetensors: a JSON header and raw tensors, no pickle
    assert header["__metadata__"] == {"format": "bintally-model"}
    versions = set()
    for path in (run, run / "model", run / "model" / "model.json", weights):
        counter = Counter.load(path)
        assert counter.labels.names == ["0", "1", "2", "3", "4", "5", "6+"] and counter.labels == LabelSpace(0, 5, True)
        versions.add(counter.artifact.version)
    assert versions == {weights.stem.removeprefix("weights-")}


def copy_model(run, folder):
    shutil.copytree(run / "model", folder)
    return folder


def edit_meta(folder, change) -> None:
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps(change(meta)))


def weights_of(folder):
    return next(folder.glob("weights-*.safetensors"))


def meta_case(change, names_weights: bool = False):
    """A copy of the run's model whose model.json is changed; the error names model.json (or the weights file)."""
    def make(d, run):
        edit_meta(copy_model(run, d), change)
        return d, weights_of(d) if names_weights else d / "model.json"
    return make


def damaged_weights(damage):
    def make(d, run):
        copy_model(run, d)
        damage(weights_of(d))
        return d, weights_of(d)
    return make


def without(key):
    return lambda m: {k: v for k, v in m.items() if k != key}


def model_json(text: bytes):
    def make(d, run):
        copy_model(run, d)
        (d / "model.json").write_bytes(text)
        return d, d / "model.json"
    return make


def photo_as_model(d, run):
    d.mkdir()
    shutil.copy(SAMPLE_PHOTOS[0], d / "model.jpg")
    return d / "model.jpg", d / "model.jpg"


def weights_removed(d, run):
    copy_model(run, d)
    missing = weights_of(d)
    missing.unlink()
    return d, missing


def folder_as_model_json(d, run):
    copy_model(run, d)
    (d / "model.json").unlink()
    (d / "model.json").mkdir()
    return d, d / "model.json"


BAD_MODELS = {  # case: (make(folder, run) -> (path to pass, the file the error names), what the error says)
    "missing": (lambda d, run: (d / "no-such-run", d / "no-such-run"), "no such model"),
    "folder without a model": (lambda d, run: (d.mkdir() or d, d), "no model here: expected model.json"),
    "model.json not JSON": (model_json(b"{not json"), "not valid JSON"),
    "model.json empty": (model_json(b""), "not valid JSON"),
    "model.json not UTF-8": (model_json(b"\xff\xfe\x00junk"), "not valid JSON"),
    "model.json a folder": (folder_as_model_json, "cannot read"),
    "model.json not an object": (model_json(b"[1, 2]"), "expected a JSON object, got list"),
    "wrong format": (meta_case(lambda m: m | {"format": "keras"}), "not a bintally model description (format is 'keras'"),
    "newer format version": (meta_case(lambda m: m | {"format_version": 99}), "written by a newer bintally (format version 99"),
    "missing weights field": (meta_case(without("weights")), "missing 'weights'"),
    "missing model_config": (meta_case(without("model_config")), "missing 'model_config'"),
    "missing tta": (meta_case(without("tta")), "missing 'tta'"),
    "tta not a bool": (meta_case(lambda m: m | {"tta": "yes"}), 'tta is "yes", expected bool'),
    "format_version a string": (meta_case(lambda m: m | {"format_version": "1"}), 'format_version is "1", expected int'),
    "model_config a list": (meta_case(lambda m: m | {"model_config": [1]}), "model_config is [1], expected dict"),
    "unknown runtime": (meta_case(lambda m: m | {"runtime": "tensorflow"}), "unknown runtime 'tensorflow'"),
    "unknown decoding": (meta_case(lambda m: m | {"decoding": "mode"}), "unknown decoding 'mode'"),
    "decoding not the model's": (meta_case(lambda m: m | {"decoding": "expected"}),
                                 "decoding 'expected' does not match the model's settings (model_config decodes by 'median')"),
    "metrics a list": (meta_case(lambda m: m | {"metrics": [0.5]}), "metrics is [0.5], expected dict"),
    "train_config a string": (meta_case(lambda m: m | {"train_config": "lr=1"}), 'train_config is "lr=1", expected dict'),
    "labels a list": (meta_case(lambda m: m | {"labels": ["0", "1"]}), 'labels is ["0", "1"], expected dict'),
    "name with a slash": (meta_case(lambda m: m | {"name": "../x"}), "name '../x' must be"),
    "unknown model setting": (meta_case(lambda m: m | {"model_config": m["model_config"] | {"colour": 1}}),
                              "model settings this version of bintally cannot use (unknown model settings ['colour'])"),
    "model setting of a wrong type": (meta_case(lambda m: m | {"model_config": m["model_config"] | {"max_count": "five"}}),
                                      "model settings this version of bintally cannot use"),
    "unknown features": (meta_case(lambda m: m | {"model_config": m["model_config"] | {"features": "stride8"}}),
                         "cannot use (unknown features 'stride8')"),
    "no ensemble members": (meta_case(lambda m: m | {"model_config": m["model_config"] | {"members": 0}}),
                            "members must be a whole number >= 1, got 0"),
    "shared_backbone a string": (meta_case(lambda m: m | {"model_config": m["model_config"] | {"shared_backbone": "yes"}}),
                                 "shared_backbone must be true or false"),
    "unknown transform setting": (meta_case(lambda m: m | {"transform": m["transform"] | {"blur": 2}}),
                                  "model settings this version of bintally cannot use (not a transform"),
    "image size out of range": (meta_case(lambda m: m | {"transform": m["transform"] | {"image_size": 3}}),
                                "image_size must be a whole number from 16 to 4096"),
    "labels mismatch": (meta_case(lambda m: m | {"labels": m["labels"] | {"names": ["0", "1"]}}),
                        "labels ['0', '1'] do not match the model's label space"),
    "weights a relative path": (meta_case(lambda m: m | {"weights": "../x.safetensors"}),
                                "weights must name a .safetensors or .onnx file in the same folder, got '../x.safetensors'"),
    "weights an absolute path": (meta_case(lambda m: m | {"weights": "/etc/passwd.safetensors"}), "in the same folder"),
    "weights not a model file": (meta_case(lambda m: m | {"weights": "config.json"}), "in the same folder, got 'config.json'"),
    "weights file missing": (weights_removed, "missing: model.json names it as the model's weights"),
    "weights truncated": (damaged_weights(lambda w: w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])),
                          "truncated or damaged weights file"),
    "weights junk": (damaged_weights(lambda w: w.write_bytes(np.random.default_rng(0).bytes(4000))), "truncated or damaged weights file"),
    "weights empty": (damaged_weights(lambda w: w.write_bytes(b"")), "truncated or damaged weights file"),
    "weights a pickle": (damaged_weights(lambda w: torch.save(load(w.read_bytes()), w)), "truncated or damaged weights file"),
    "weights do not fit": (meta_case(lambda m: m | {"model_config": m["model_config"] | {"backbone": "resnet18"}}, names_weights=True),
                           "weights do not fit the model model.json describes (resnet18"),
    "weights of another label space": (meta_case(lambda m: m | {"model_config": m["model_config"] | {"max_count": 3},
                                                               "labels": {"min_count": 0, "max_count": 3, "overflow": "class",
                                                                          "names": ["0", "1", "2", "3", "4+"]}},
                                                 names_weights=True), "weights do not fit"),
    "training checkpoint": (lambda d, run: (run / "checkpoints" / "last.pt",) * 2, "a training checkpoint, not a model"),
    "a photo": (photo_as_model, "not a bintally model: pass the folder holding model.json"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_model_is_one_line_naming_the_file(case, run, tiny_manifest, tmp_path):
    path, named = BAD_MODELS[case][0](tmp_path / "model", run)
    with pytest.raises(DataError) as error:
        Counter.load(path)
    assert error.value.path == str(named)
    assert "\n" not in str(error.value)
    result = run_cli("predict", "--model", path, "--no-progress", SAMPLE_PHOTOS[0])
    assert_one_line_error(result, str(named), BAD_MODELS[case][1])
    assert result.stdout == ""
    result = run_cli("evaluate", "--model", path, "--data", tiny_manifest, "--split", "val", *FAST)
    assert_one_line_error(result, str(named), BAD_MODELS[case][1])
    assert result.stdout == ""


def test_an_onnx_export_on_the_torch_backend_is_one_line(run, tmp_path):
    folder = copy_model(run, tmp_path / "export")
    edit_meta(folder, lambda m: m | {"runtime": "onnx"})
    with pytest.raises(ConfigError, match="is an ONNX export: use --backend onnx"):
        Counter.load(folder)
    assert_one_line_error(run_cli("predict", "--model", folder, "--no-progress", SAMPLE_PHOTOS[0]), str(folder), "--backend onnx")


def test_unknown_backend_is_refused(run):
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'"):
        Counter.load(run, backend="tensorrt")
    result = run_cli("predict", "--model", run, "--backend", "tensorrt", SAMPLE_PHOTOS[0])
    assert result.returncode == 2 and "tensorrt" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- predicting photos, some of them bad


def test_predict_paths_counts_every_good_photo_and_names_every_bad_one(run, tmp_path):
    bad = bad_images(tmp_path)
    good = [SAMPLE_PHOTOS[2], SAMPLE_PHOTOS[3], SAMPLE_PHOTOS[4]]
    counter = Counter.load(run)
    paths = [good[0], *(p for p, _ in bad.values()), good[1], good[2]]
    results, failures = counter.count_paths(paths, batch_size=2, progress=False)
    assert [r["image"] for r in results] == [str(p) for p in good]
    assert len(failures) == len(bad)
    for failure, (path, problem) in zip(failures, bad.values()):
        assert failure.startswith(f"{path}: ") and problem in failure, failure
    alone, none_failed = counter.count_paths(good, progress=False)
    assert none_failed == [] and [r["probabilities"] for r in alone] == [r["probabilities"] for r in results]


def test_unusual_image_modes_are_counted(run, tmp_path):
    paths = unusual_images(tmp_path)
    results, failures = Counter.load(run).count_paths(paths, progress=False)
    assert failures == [] and [r["image"] for r in results] == [str(p) for p in paths]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-3 for r in results)


def test_cli_predict_reports_each_bad_photo_counts_the_rest_and_exits_1(run, tmp_path):
    bad = bad_images(tmp_path)
    good = [SAMPLE_PHOTOS[5], SAMPLE_PHOTOS[6]]
    result = run_cli("predict", "--model", run, "--no-progress", good[0], *(p for p, _ in bad.values()), good[1])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [str(p) for p in good]
    lines = result.stderr.splitlines()
    assert len(lines) == len(bad) + 1
    for line, (path, problem) in zip(lines, bad.values()):
        assert line.startswith(f"skipped {path}: ") and problem in line
    assert lines[-1] == f"2 photo(s) counted, {len(bad)} could not be read"


# ---------------------------------------------------------------- evaluating: photos gone, changed or unreadable


@pytest.fixture
def indexed_bucket(mirror, tmp_path):
    """A bucket of 12 real photos indexed into a manifest (no split: every photo is scored)."""
    ids = [f"{i:05d}" for i in range(100, 112)]
    bucket = copy_bucket(mirror, tmp_path / "bucket", ids)
    manifest = tmp_path / "bucket.parquet"
    index_to_manifest(bucket, manifest, workers=1, progress=False)
    return bucket, manifest


def test_photos_deleted_changed_or_unreadable_after_indexing_are_reported_and_the_rest_scored(run, indexed_bucket, tmp_path):
    bucket, manifest = indexed_bucket
    images = sorted((bucket / "bin-images").glob("*.jpg"))
    images[0].unlink()  # deleted
    images[1].write_bytes(images[1].read_bytes()[:5000])  # changed: another size
    images[2].write_bytes(b"\0" * images[2].stat().st_size)  # same size, so it passes the stale check, but unreadable
    result = run_cli("evaluate", "--model", run, "--data", manifest, "--split", "all", "--json", tmp_path / "m.json", *FAST)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{images[0]}: missing since indexing") for line in lines), lines
    assert any(line.startswith(f"{images[1]}: changed since indexing") for line in lines), lines
    assert any(line.startswith(f"{images[2]}: ") and "skipped" in line for line in lines), lines
    assert any("2 photo(s)" in line and "skipped" in line for line in lines), lines
    assert any("1 photo(s)" in line and "could not be read" in line for line in lines), lines
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["n"] == 9 and saved["info"]["stale"] == 2 and saved["info"]["unreadable"] == [str(images[2])]


def test_unreadable_photo_in_a_loader_worker_is_left_out_and_the_rest_aligned(run, indexed_bucket):
    bucket, manifest = indexed_bucket
    broken = sorted((bucket / "bin-images").glob("*.jpg"))[3]
    broken.write_bytes(b"\0" * broken.stat().st_size)
    with_worker = evaluate_model(run, manifest, split=None, batch_size=4, workers=1, progress=False, resamples=20)
    in_process = evaluate_model(run, manifest, split=None, batch_size=4, workers=0, progress=False, resamples=20)
    assert with_worker.info["unreadable"] == [str(broken)] and len(with_worker.predictions) == 11
    assert str(broken) not in with_worker.predictions["path"].tolist()
    assert with_worker.predictions.equals(in_process.predictions)


def test_nothing_left_to_score_is_one_line(run, indexed_bucket):
    bucket, manifest = indexed_bucket
    images = sorted((bucket / "bin-images").glob("*.jpg"))
    for image in images:
        image.write_bytes(b"\0" * image.stat().st_size)  # all unreadable, none stale
    result = run_cli("evaluate", "--model", run, "--data", manifest, "--split", "all", *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: ") and "none of the 12 photo(s) could be read" in result.stderr
    for image in images:
        image.unlink()
    result = run_cli("evaluate", "--model", run, "--data", manifest, "--split", "all", *FAST)
    assert result.returncode == 2 and result.stderr.count("missing since indexing") == 12
    assert result.stderr.splitlines()[-1].startswith(f"error: {manifest}: no photos to evaluate")


def test_class_folders_with_unusual_and_broken_photos(run, tmp_path):
    unusual = unusual_images(tmp_path / "data" / "2")
    broken = tmp_path / "data" / "0" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(SAMPLE_PHOTOS[0].read_bytes()[:3000])
    result = run_cli("evaluate", "--model", run, "--data", tmp_path / "data", "--split", "all", *FAST)
    assert result.returncode == 0, result.stderr
    assert f"{broken}: corrupt" in result.stderr and "1 photo(s)" in result.stderr
    assert f"all: n={len(unusual)} " in result.stdout


# ---------------------------------------------------------------- saved predictions


def predictions_table() -> pd.DataFrame:
    probs = np.full((4, 7), 0.1)
    probs[:, 0] = 0.4
    return pd.DataFrame({"id": ["a", "b", "c", "d"], "true_label": [0, 1, 6, 2], "predicted_label": [0, 0, 6, 3],
                         **{f"prob_{name}": probs[:, i] for i, name in enumerate(LabelSpace().names)}})


BAD_PREDICTIONS = {  # column, row (0-based), value, what the error says
    "fractional label": ("predicted_label", 1, 1.5, "1.5 is not a whole number"),
    "text label": ("true_label", 2, "three", "'three' is not a number"),
    "negative label": ("true_label", 3, -1, "-1 is not a class index 0..6"),
    "label out of range": ("predicted_label", 2, 7, "7 is not a class index 0..6"),
    "empty label": ("true_label", 1, None, "(empty) is not a number"),
    "text probability": ("prob_2", 3, "high", "'high' is not a number"),
    "probability above 1": ("prob_6+", 2, 1.5, "1.5 is not a probability between 0 and 1"),
    "negative probability": ("prob_0", 1, -0.2, "-0.2 is not a probability"),
    "NaN probability": ("prob_3", 0, float("nan"), "(empty) is not a number"),
}


@pytest.mark.parametrize("case", list(BAD_PREDICTIONS))
def test_bad_value_in_saved_predictions_names_the_column_and_first_bad_row(case, tmp_path):
    column, row, value, problem = BAD_PREDICTIONS[case]
    frame = predictions_table()
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as error:
        load_predictions(path)
    assert str(error.value).startswith(f"{path}: column {column}, line {row + 2}: {problem}"), str(error.value)
    assert_one_line_error(run_cli("evaluate", "--predictions", path), "p.csv", f"column {column}, line {row + 2}", problem)


def test_bad_predictions_files(tmp_path):
    good = predictions_table()
    cases = {
        "empty.csv": (lambda p: p.write_bytes(b""), "empty file"),
        "header.csv": (lambda p: good.head(0).to_csv(p, index=False), "only a header"),
        "p.txt": (lambda p: good.to_csv(p, index=False), "unknown file type '.txt'"),
        "folder.csv": (lambda p: p.mkdir(), "is a folder"),
        "text-labels.parquet": (lambda p: good.astype({"true_label": str}).to_parquet(p), "column true_label, row 1:"),
        "bool-probs.parquet": (lambda p: good.assign(**{"prob_1": True}).to_parquet(p), "column prob_1, row 1:"),
        "not-counts.csv": (lambda p: good.rename(columns={"prob_3": "prob_x"}).to_csv(p, index=False), "are not one per count"),
        "garbage.parquet": (lambda p: p.write_text("not parquet"), "cannot read predictions"),
    }
    for name, (make, problem) in cases.items():
        make(tmp_path / name)
        with pytest.raises(DataError) as error:
            load_predictions(tmp_path / name)
        assert str(error.value).startswith(f"{tmp_path / name}: ") and problem in str(error.value), (name, error.value)
    assert_one_line_error(run_cli("evaluate", "--predictions", tmp_path / "text-labels.parquet"), "text-labels.parquet",
                          "'0' is not a number (the column holds text)")


def test_good_predictions_load_with_integer_labels(tmp_path):
    good = predictions_table()
    good.to_csv(tmp_path / "p.csv", index=False)
    loaded = load_predictions(tmp_path / "p.csv")
    assert loaded["true_label"].tolist() == [0, 1, 6, 2] and loaded["predicted_label"].dtype.kind == "i"


def test_minimal_predictions_file_gives_report_and_strict_json(tmp_path):
    only_zero = predictions_table().assign(true_label=0)  # no photo of counts 1-5: those metrics are undefined
    only_zero.to_csv(tmp_path / "p.csv", index=False)
    result = run_cli("evaluate", "--predictions", tmp_path / "p.csv", "--json", tmp_path / "m.json",
                     "--report", tmp_path / "report", "--bootstrap", "20")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "m.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert saved["n_1_5"] == 0 and saved["accuracy_1_5"] is None and saved["accuracy"] == pytest.approx(0.5)
    assert (tmp_path / "report" / "counts.png").stat().st_size > 1000


# ---------------------------------------------------------------- label spaces


def test_a_1_to_5_model_without_overflow_is_scored_on_counts():
    space = LabelSpace(1, 5, overflow=False)
    probs = np.eye(5)[[0, 1, 2, 3, 3]] * 0.6 + 0.08
    frame = pd.DataFrame({"id": list("abcde"), "true_label": [0, 1, 2, 3, 4], "predicted_label": [0, 1, 2, 3, 3],
                          **{f"prob_{name}": probs[:, i] for i, name in enumerate(space.names)}})
    result = evaluate_predictions(frame, resamples=20)
    assert result.space == space
    assert result.subset_names() == [("all", ""), ("1-5", "_0_5"), ("1-5", "_1_5")]
    m = result.metrics
    assert (m["n"], m["n_0_5"], m["n_1_5"]) == (5, 5, 5)  # counts 1..5, not class indices 0..4
    assert m["accuracy_1_5"] == pytest.approx(0.8) and m["rmse_1_5"] == pytest.approx(np.sqrt(1 / 5))
    assert m["confusion"]["classes"] == ["1", "2", "3", "4", "5"]


def test_subset_names_of_the_usual_label_space():
    frame = predictions_table()  # one photo of "6+": the counts above 5 are a subset too
    assert evaluate_predictions(frame, resamples=20).subset_names() == [("all", ""), ("0-5", "_0_5"), ("1-5", "_1_5"), ("6+", "_6_up")]
    assert evaluate_predictions(frame.iloc[[0, 1, 3]], resamples=20).subset_names() == [("all", ""), ("0-5", "_0_5"), ("1-5", "_1_5")]


def test_report_of_a_1_to_5_model(tmp_path):
    space = LabelSpace(1, 5, overflow=False)
    frame = pd.DataFrame({"id": list("abc"), "true_label": [0, 2, 4], "predicted_label": [0, 2, 3],
                          **{f"prob_{name}": [0.2, 0.2, 0.2] for name in space.names}})
    page = evaluate_predictions(frame, resamples=20).write_report(tmp_path / "report").read_text()
    assert "counts 1-5" in page and "overflow class" not in page


def test_photos_outside_the_models_label_space(tiny_manifest):
    df = read_manifest(tiny_manifest)
    photos, info = evaluation_photos(df, "val", LabelSpace(1, 5, overflow=False))
    val = df[df["split"] == "val"]
    assert len(photos) == int((val["count"] >= 1).sum()) < len(val)
    assert "fewer than 1 items left out" in info["outside_label_space"]
    assert (photos["label"] == photos["count"].clip(upper=6) - 1).all()  # 6 and more: the padded "6+" column
    with pytest.raises(DataError, match="no photos to evaluate: none of the photos of split val"):
        evaluation_photos(df[df["count"] == 0], "val", LabelSpace(1, 5, overflow=False))


# ---------------------------------------------------------------- other mistakes a new user makes


@pytest.fixture
def earlier_output(run, tiny_manifest, tmp_path):
    """A successful evaluation's files, which a failing command must leave as they were."""
    out = tmp_path / "out.json"  # a folder, with a name that one may pass to --json by mistake
    result = run_cli("evaluate", "--model", run, "--data", tiny_manifest, "--split", "val", "--json", out / "m.json",
                     "--save-predictions", out / "p.csv", *FAST)
    assert result.returncode == 0, result.stderr
    return out


def contents(*paths) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def test_evaluate_mistakes_are_one_line_and_leave_earlier_output_alone(run, tiny_manifest, earlier_output, tmp_path):
    out = earlier_output
    before = contents(out / "m.json", out / "p.csv")
    (tmp_path / "fake.parquet").write_text("id,count\n1,2\n")
    (tmp_path / "report-file").write_text("")
    photo = SAMPLE_PHOTOS[0]
    model = ["--model", run]
    save = ["--json", out / "m.json", "--save-predictions", out / "p.csv"]
    cases = [
        ([*model, "--data", tiny_manifest, "--split", "test", *save], "tiny.parquet", "split 'test' is empty (splits present: train, val)"),
        ([*model, "--data", photo, *save], photo.name, "expected a folder or a .csv"),
        ([*model, "--data", tmp_path / "fake.parquet", *save], "fake.parquet", "not a readable Parquet manifest"),
        ([*model, "--data", tiny_manifest, "--report", tmp_path / "report-file"], "report-file", "is a file"),
        ([*model, "--data", tiny_manifest, "--save-predictions", tmp_path / "x.txt"], "x.txt", "unsupported file type"),
        ([*model, "--data", tiny_manifest, "--json", out], "out.json", "is a folder"),
        (["--model", tmp_path / "nope", "--data", tiny_manifest, *save], "nope", "no such model"),
        (["--predictions", tmp_path, "--json", out / "m.json"], tmp_path.name, "is a folder"),
        (["--predictions", out / "p.csv", "--model", run, "--json", out / "m.json"], "--model", "cannot be given together"),
        (["--predictions", out / "p.csv", *save], "--save-predictions", "cannot be given together"),
    ]
    for args, name, problem in cases:
        assert_one_line_error(run_cli("evaluate", *args, *FAST), name, problem)
        assert contents(out / "m.json", out / "p.csv") == before, args


def test_api_checks_outputs_before_any_work(tmp_path):
    (tmp_path / "report-file").write_text("")
    with pytest.raises(DataError, match="report-file: is a file"):
        evaluate(model=tmp_path / "no-such-model", report=tmp_path / "report-file")  # the output is checked first
    with pytest.raises(DataError, match="x.txt: unsupported file type"):
        evaluate(predictions=tmp_path / "p.csv", save_to=tmp_path / "x.txt")
