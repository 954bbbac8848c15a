"""The whole count range: the hurdle head, its decoding, and a whole-range model trained, saved, reloaded and served."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bintally.data.images import decode_image
from bintally.inference import Counter
from bintally.labels import HURDLE_GATE, LabelSpace, count_probability
from bintally.models.config import ModelConfig
from bintally.models.heads import build_head
from bintally.paths import SAMPLE_DIR
from bintally.training import TrainConfig, train
from tests.training_helpers import TINY


def test_the_hurdle_head_gives_distributions_and_learns_both_parts():
    torch.manual_seed(0)
    head = build_head("hurdle", 16, 14, dropout=0.0)  # counts 0..12 and "13+"
    x, y = torch.randn(256, 16) * 0.3, torch.randint(0, 14, (256,))
    x[:, 0] = y * 1.5
    optimiser = torch.optim.Adam(head.parameters(), 0.05)
    first = None
    for _ in range(300):
        loss = head.loss(head(x), y, 0.05)
        first = first if first is not None else loss.item()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    probs = head.eval().probs(head(x))
    assert torch.allclose(probs.sum(-1), torch.ones(256), atol=1e-5) and (probs >= 0).all()
    assert float(loss) < first * 0.5
    predicted = LabelSpace(0, 12, True).decode(probs.detach().numpy(), "hurdle")
    low, high = (y <= 5).numpy(), (y > 5).numpy()
    assert (predicted[low] == y.numpy()[low]).mean() > 0.7  # the 0-5 part counts exactly
    assert (abs(predicted[high] - y.numpy()[high]) <= 1).mean() > 0.7  # the part above 5 within one


def test_the_hurdle_head_needs_counts_above_its_split():
    from bintally.errors import ConfigError

    with pytest.raises(ConfigError, match="raise --max-count"):
        build_head("hurdle", 8, 7)


def test_hurdle_decoding_decides_the_part_first():
    space = LabelSpace(0, 10, True)
    unsure = np.zeros((1, 12))
    unsure[0, [1, 2]] = [0.2, 0.2]  # 0.4 on 0-5: a plain median lands above 5 ...
    unsure[0, [7, 8, 9]] = [0.2, 0.1, 0.3]
    assert space.decode(unsure, "median")[0] == 7
    assert space.decode(unsure, "hurdle")[0] == 1  # ... the gate (0.6 < HURDLE_GATE) says 0-5, whose median is 1
    sure = np.zeros((1, 12))
    sure[0, 2] = 1 - HURDLE_GATE - 0.01
    sure[0, [6, 9, 10, 11]] = [0.25, 0.25, 0.25, HURDLE_GATE + 0.01 - 0.75]  # P(count > 5) = HURDLE_GATE + 0.01
    assert HURDLE_GATE > 0.75
    assert space.decode(sure, "hurdle")[0] == 10  # above 5: the count whose +-1 window is most likely
    assert ModelConfig(head="hurdle").decoding == "hurdle"


def test_the_overflow_class_spreads_over_a_tail_that_sums_to_it():
    space = LabelSpace(0, 20, True)
    probs = np.full((1, 22), 1 / 22)
    tail = count_probability(np.repeat(probs, 500, 0), space, np.arange(21, 521))
    assert tail.sum() == pytest.approx(1 / 22, rel=1e-6)
    assert count_probability(probs, space, [20])[0] == pytest.approx(1 / 22)


@pytest.fixture(scope="module")
def whole_range_run(tmp_path_factory):
    """A hurdle model over counts 0-10 and "11+", trained for 2 epochs on the bundled sample's real photos."""
    out = tmp_path_factory.mktemp("whole-range") / "run"
    config = TrainConfig.from_dict(TINY | dict(out=str(out), head="hurdle", max_count=10, overflow="class", epochs=2,
                                               mode="frozen"))
    train(config)
    return out


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_whole_range_model_reloads_and_answers_every_count(whole_range_run, backend):
    counter = Counter.load(whole_range_run, backend)
    assert counter.labels == LabelSpace(0, 10, True) and counter.labels.names[-1] == "11+"
    assert counter.artifact.decoding == "hurdle"
    photos = sorted((SAMPLE_DIR / "bin-images").glob("*.jpg"))[:8]
    images = np.stack([counter.preprocess(decode_image(p.read_bytes(), str(p))) for p in photos])
    prediction = counter.predict(images)
    assert prediction.probabilities.shape == (8, 12)
    assert np.allclose(prediction.probabilities.sum(-1), 1, atol=1e-4)
    assert (prediction.probabilities[:, 6:].sum(-1) > 0).all()  # every photo has some probability above 5
    assert [r["count"] for r in prediction.rows()] == prediction.counts.tolist()


def test_torch_and_onnx_agree_on_a_whole_range_model(whole_range_run):
    photos = sorted((SAMPLE_DIR / "bin-images").glob("*.jpg"))[:8]
    got = []
    for backend in ("torch", "onnx"):
        counter = Counter.load(whole_range_run, backend)
        images = np.stack([counter.preprocess(decode_image(p.read_bytes(), str(p))) for p in photos])
        got.append(counter.predict(images).probabilities)
    assert np.abs(got[0] - got[1]).max() < 1e-3
