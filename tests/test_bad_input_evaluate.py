"""Bad input to `bintally evaluate` and `bintally predict`: one line naming the file and the problem, exit 2,
never a traceback; a photo that cannot be read is reported on its own line and the rest are counted."""

from __future__ import annotations

import datetime
import json
import shutil
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bintally.data import index_to_manifest, read_manifest, split_manifest, write_manifest
from bintally.data.split import SplitConfig
from bintally.errors import DataError
from bintally.evaluation import evaluate, evaluate_model, evaluate_predictions, load_predictions
from bintally.evaluation.evaluate import evaluation_photos
from bintally.labels import LabelSpace
from bintally.paths import SAMPLE_DIR
from bintally.predict import Predictor
from bintally.training import train
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.conftest import copy_bucket
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
    return torch.load(run / "best.pt", map_location="cpu", weights_only=True)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


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
    cases["bomb"][0].write_bytes(png_claiming(30_000, 30_000))
    cases["empty"][0].write_bytes(b"")
    return cases


# ---------------------------------------------------------------- loading a model


def test_real_model_loads_without_running_code(run, saved_model):
    assert {"model_config", "transform", "state_dict", "classes"} <= set(saved_model)  # loaded with weights_only=True
    for path in (run, run / "best.pt"):
        predictor = Predictor.load(path)
        assert predictor.classes == ["0", "1", "2", "3", "4", "5", "6+"] and predictor.space == LabelSpace(0, 5, True)


def write_model(path, saved: dict):
    torch.save(saved, path)
    return path


BAD_MODELS = {
    "missing": (lambda d, s, run: d / "no-such-run", "no such model"),
    "folder without best.pt": (lambda d, s, run: d, "no best.pt in this folder"),
    "empty file": (lambda d, s, run: d / "best.pt", "empty file"),
    "truncated": (lambda d, s, run: d / "best.pt", "truncated or damaged"),
    "random bytes": (lambda d, s, run: d / "best.pt", "not a PyTorch model file"),
    "a JPEG": (lambda d, s, run: d / "best.pt", "it is a JPEG image"),
    "JSON": (lambda d, s, run: d / "best.pt", "it is JSON text"),
    "training checkpoint": (lambda d, s, run: run / "checkpoints" / "last.pt", "a training checkpoint, not a model: pass the run directory"),
    "renamed checkpoint": (lambda d, s, run: d / "best.pt", "a training checkpoint, not a model"),
    "code inside": (lambda d, s, run: write_model(d / "best.pt", s | {"made": datetime.date(2024, 1, 1)}), "could run code"),
    "not a dict": (lambda d, s, run: write_model(d / "best.pt", [s["state_dict"]]), "not a bintally model: it holds a list"),
    "missing key": (lambda d, s, run: write_model(d / "best.pt", {k: v for k, v in s.items() if k != "state_dict"}),
                    "not a bintally model: missing state_dict"),
    "wrong type": (lambda d, s, run: write_model(d / "best.pt", s | {"classes": "0123456+"}), "classes is a str, expected a list"),
    "unknown setting": (lambda d, s, run: write_model(d / "best.pt", s | {"model_config": s["model_config"] | {"colour": 1}}),
                        "model settings this version of bintally cannot use"),
    "classes differ": (lambda d, s, run: write_model(d / "best.pt", s | {"classes": ["0", "1"]}), "do not match the model's label space"),
    "weights do not fit": (lambda d, s, run: write_model(d / "best.pt", s | {
        "model_config": s["model_config"] | {"backbone": "resnet18"}}), "weights do not fit the model it describes (resnet18"),
}


def make_bad_model(case: str, folder, saved: dict, run):
    folder.mkdir()
    if case == "empty file":
        (folder / "best.pt").write_bytes(b"")
    elif case == "truncated":
        data = (run / "best.pt").read_bytes()
        (folder / "best.pt").write_bytes(data[: len(data) // 2])
    elif case == "random bytes":
        (folder / "best.pt").write_bytes(b"\x07" + np.random.default_rng(0).bytes(4000))
    elif case == "a JPEG":
        shutil.copy(SAMPLE_PHOTOS[0], folder / "best.pt")
    elif case == "JSON":
        shutil.copy(run / "config.json", folder / "best.pt")
    elif case == "renamed checkpoint":
        shutil.copy(run / "checkpoints" / "last.pt", folder / "best.pt")
    return BAD_MODELS[case][0](folder, saved, run)


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_model_path_is_one_line_naming_the_file(case, run, saved_model, tmp_path):
    path = make_bad_model(case, tmp_path / "model", saved_model, run)
    with pytest.raises(DataError) as error:
        Predictor.load(path)
    assert path.name in error.value.path
    result = run_cli("predict", "--model", path, "--no-progress", SAMPLE_PHOTOS[0])
    assert_one_line_error(result, path.name, BAD_MODELS[case][1])
    assert result.stdout == ""


# ---------------------------------------------------------------- predicting photos, some of them bad


def test_predict_paths_counts_every_good_photo_and_names_every_bad_one(run, tmp_path):
    bad = bad_images(tmp_path)
    good = [SAMPLE_PHOTOS[2], SAMPLE_PHOTOS[3], SAMPLE_PHOTOS[4]]
    predictor = Predictor.load(run)
    paths = [good[0], *(p for p, _ in bad.values()), good[1], good[2]]
    results, failures = predictor.predict_paths(paths, batch_size=2, progress=False)
    assert [r["image"] for r in results] == [str(p) for p in good]
    assert len(failures) == len(bad)
    for failure, (path, problem) in zip(failures, bad.values()):
        assert failure.startswith(f"{path}: ") and problem in failure, failure
    alone, none_failed = predictor.predict_paths(good, progress=False)
    assert none_failed == [] and [r["probs"] for r in alone] == [r["probs"] for r in results]


def test_unusual_image_modes_are_counted(run, tmp_path):
    paths = unusual_images(tmp_path)
    results, failures = Predictor.load(run).predict_paths(paths, progress=False)
    assert failures == [] and [r["image"] for r in results] == [str(p) for p in paths]
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-3 for r in results)


def test_cli_predict_reports_each_bad_photo_counts_the_rest_and_exits_1(run, tmp_path):
    bad = bad_images(tmp_path)
    good = [SAMPLE_PHOTOS[5], SAMPLE_PHOTOS[6]]
    result = run_cli("predict", "--model", run, "--no-progress", good[0], *(p for p, _ in bad.values()), good[1])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [str(p) for p in good]
    lines = result.stderr.splitlines()
    assert len(lines) == len(bad) + 1
    for line, (path, problem) in zip(lines, bad.values()):
        assert line.startswith(f"{path}: ") and problem in line
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
    frame = predictions_table()
    assert evaluate_predictions(frame, resamples=20).subset_names() == [("all", ""), ("0-5", "_0_5"), ("1-5", "_1_5")]


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
    max3 = split_manifest(read_manifest(tiny_manifest).drop(columns=["split", "label"]), SplitConfig(max_count=3))
    write_manifest(max3, tmp_path / "max3.parquet", info=max3.attrs["info"])
    (tmp_path / "fake.parquet").write_text("id,count\n1,2\n")
    (tmp_path / "report-file").write_text("")
    photo = SAMPLE_PHOTOS[0]
    model = ["--model", run]
    save = ["--json", out / "m.json", "--save-predictions", out / "p.csv"]
    cases = [
        ([*model, "--data", tiny_manifest, "--split", "test", *save], "tiny.parquet", "split 'test' is empty (splits present: train, val)"),
        ([*model, "--data", photo, *save], photo.name, "expected a folder or a .csv"),
        ([*model, "--data", tmp_path / "fake.parquet", *save], "fake.parquet", "not a readable Parquet manifest"),
        ([*model, "--data", tmp_path / "max3.parquet", "--split", "val", *save], "max3.parquet", "--max-count 3"),
        ([*model, "--data", tiny_manifest, "--report", tmp_path / "report-file"], "report-file", "is a file"),
        ([*model, "--data", tiny_manifest, "--save-predictions", tmp_path / "x.txt"], "x.txt", "unsupported file type"),
        ([*model, "--data", tiny_manifest, "--json", out], "out.json", "is a folder"),
        (["--model", tmp_path / "nope", "--data", tiny_manifest, *save], "nope", "no such model"),
        (["--predictions", tmp_path, *save], tmp_path.name, "is a folder"),
        (["--predictions", out / "p.csv", "--model", run, *save], "", "either --model"),
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
