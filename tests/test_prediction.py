"""`Prediction`: one value from `Counter.predict` to every consumer, and its views agree with each other.

REST rows are the rounded view, v2 tensors the unrounded one (float32 straight from the calibrated
probabilities), evaluation frames and audit scores read the same arrays.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from bintally.audit.scoring import discrepancy_scores
from bintally.evaluation.predictions import PROB_PREFIX, predictions_frame
from bintally.inference import Prediction
from bintally.inference.temperature import apply_temperature
from bintally.labels import LabelSpace

TEMPERATURE = 3.0


def random_probs(n: int, classes: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(scale=3, size=(n, classes))
    probs = np.exp(logits)
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32)


def test_count_to_class_is_one_mapping():
    space = LabelSpace(1, 3, overflow=True)  # classes 1, 2, 3 and "4+"
    assert space.class_of([0, 1, 3, 4, 9]).tolist() == [-1, 0, 2, 3, 3]
    assert LabelSpace(1, 3, overflow=False).class_of([0, 1, 3, 4]).tolist() == [-1, 0, 2, -1]
    labels = space.label_of(pd.Series([0, 2, None, 9], index=[5, 6, 7, 8]))
    assert labels.index.tolist() == [5, 6, 7, 8] and labels.tolist() == [pd.NA, 1, pd.NA, 3]
    probs = np.array([[0.1, 0.2, 0.3, 0.4]] * 3)
    assert space.probability_of(probs, [4, 0, 2]).tolist() == [0.4, 0.0, 0.2]


def test_classes_come_from_the_raw_probabilities_and_the_rest_is_calibrated():
    space = LabelSpace()
    raw = random_probs(64, space.n_classes)
    prediction = Prediction.of(space, raw, "median", TEMPERATURE)
    assert np.array_equal(prediction.raw, raw)
    assert np.array_equal(prediction.probabilities, apply_temperature(raw, TEMPERATURE))
    assert np.array_equal(prediction.classes, space.decode(raw, "median"))
    assert (space.decode(prediction.probabilities, "median") != prediction.classes).any(), "T = 3 should move some medians"


@pytest.mark.parametrize("overflow", [True, False])
def test_the_views_agree(overflow):
    space = LabelSpace(1, 5, overflow=overflow)
    prediction = Prediction.of(space, random_probs(40, space.n_classes, seed=1), "argmax", TEMPERATURE)
    rows, tensors = prediction.rows(), prediction.tensors()
    probs = prediction.probabilities
    assert tensors["probabilities"].dtype == np.float32 and np.array_equal(tensors["probabilities"], probs)  # never rounded
    assert np.abs(tensors["probabilities"] - np.round(tensors["probabilities"], 4)).max() > 1e-6
    assert tensors["count"].dtype == np.int64 and tensors["count"].tolist() == [r["count"] for r in rows]
    assert [label.decode() for label in tensors["label"]] == [r["label"] for r in rows]
    for i, row in enumerate(rows):
        assert row["probabilities"] == {name: round(float(p), 4) for name, p in zip(space.names, probs[i])}
        assert row["confidence"] == round(float(probs[i, prediction.classes[i]]), 4)
        assert row["confidence"] == pytest.approx(float(tensors["confidence"][i]), abs=5e-5)
        assert row["expected_count"] == pytest.approx(float(tensors["expected_count"][i]), abs=5e-4)
        assert row["count"] == space.min_count + prediction.classes[i]

    counts = np.random.default_rng(2).integers(0, 8, len(prediction))
    photos = pd.DataFrame({"id": [str(i) for i in range(len(counts))], "path": "p.jpg", "count": counts,
                           "label": LabelSpace(1, 5, overflow=True).class_of(counts)})
    frame = predictions_frame(photos, prediction.with_overflow_class())
    assert frame["predicted_count"].tolist() == tensors["count"].tolist()
    assert np.array_equal(frame["confidence"], prediction.confidences)
    assert np.array_equal(frame["expected_count"], prediction.expected_counts)
    assert [c[len(PROB_PREFIX):] for c in frame.columns if c.startswith(PROB_PREFIX)] == LabelSpace(1, 5, True).names
    assert np.array_equal(frame[[f"{PROB_PREFIX}{n}" for n in space.names]].to_numpy(), probs.astype(np.float64))

    scores = discrepancy_scores(prediction, counts)
    assert scores["predicted"].tolist() == tensors["count"].tolist()
    assert np.array_equal(scores["expected"], prediction.expected_counts)
    classes = space.class_of(counts)
    assert scores["p_record"].tolist() == [float(probs[i, c]) if c >= 0 else 0.0 for i, c in enumerate(classes)]


def test_v2_probabilities_are_the_unrounded_calibrated_ones(tmp_path):
    """OIP v2 answers float32 probabilities straight from the calibrated arrays (JSON and binary alike), never rounded."""
    from fastapi.testclient import TestClient

    from bintally.inference import Counter
    from bintally.models.artifact import read_artifact
    from bintally.serving.app import create_app
    from bintally.serving.config import ServeConfig
    from bintally.serving.dataplane import DataPlane
    from bintally.serving.v2 import HEADER_LENGTH
    from tests.conftest import make_artifact

    artifact = make_artifact(tmp_path / "model", head="ordinal", seed=3)
    replace(read_artifact(artifact.path), calibration={"method": "temperature", "temperature": TEMPERATURE}).write_metadata()
    counter = Counter.load(artifact.path, "torch")
    arrays = np.random.default_rng(4).normal(size=(6, 3, 64, 64)).astype(np.float32)
    want = counter.predict(arrays)
    assert not np.allclose(want.probabilities, want.raw, atol=1e-3)

    config = ServeConfig(model=str(artifact.path), backend="torch")
    request = {"inputs": [{"name": "images", "datatype": "FP32", "shape": list(arrays.shape), "data": arrays.ravel().tolist()}],
               "outputs": [{"name": n} for n in ("probabilities", "confidence", "expected_count", "count")]}
    with TestClient(create_app(config, DataPlane(config), load_on_startup=True)) as http:
        name = http.get("/v1/model").json()["name"]
        reply = http.post(f"/v2/models/{name}/infer", json=request)
        assert reply.status_code == 200, reply.text
        outputs = {o["name"]: np.asarray(o["data"], np.float32) for o in reply.json()["outputs"]}
        binary = http.post(f"/v2/models/{name}/infer", json={**request, "parameters": {"binary_data_output": True}})
        assert binary.status_code == 200, binary.text
    np.testing.assert_allclose(outputs["probabilities"].reshape(want.probabilities.shape), want.probabilities, rtol=0, atol=1e-6)
    np.testing.assert_allclose(outputs["confidence"], want.confidences, rtol=0, atol=1e-6)
    np.testing.assert_allclose(outputs["expected_count"], want.expected_counts, rtol=0, atol=1e-5)
    assert outputs["count"].tolist() == want.counts.tolist()
    assert np.abs(outputs["probabilities"] - np.round(outputs["probabilities"], 4)).max() > 1e-6  # not quantised to 4 decimals
    header = int(binary.headers[HEADER_LENGTH])
    raw_probs = np.frombuffer(binary.content[header:header + want.probabilities.size * 4], "<f4")
    np.testing.assert_array_equal(raw_probs, outputs["probabilities"])
