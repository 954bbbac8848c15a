"""Backbones load real ImageNet weights; heads give proper distributions; bad settings are refused early."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bintally.errors import ConfigError
from bintally.inference import Prediction
from bintally.labels import LabelSpace
from bintally.models import CountingModel, ModelConfig, build_head, efficientnet_lite
from bintally.models.backbones import build_backbone
from bintally.models.model import ProbabilityModel, fingerprint

CAT_CLASSES = range(281, 286)  # ImageNet's domestic cats


def chelsea_batch(size: int) -> torch.Tensor:
    from skimage.data import chelsea

    img = Image.fromarray(chelsea()).resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    return (x - 0.5) / 0.5


@pytest.mark.parametrize("variant, size", [("efficientnet_lite0", 224), ("efficientnet_lite2", 260)])
def test_shipped_imagenet_weights_see_a_cat(variant, size):
    model = efficientnet_lite(variant).eval()
    with torch.no_grad():
        probs = model(chelsea_batch(size)).softmax(-1)[0]
    assert int(probs.argmax()) in CAT_CLASSES
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.8


def test_random_init_does_not_see_a_cat():
    model = efficientnet_lite("efficientnet_lite0", pretrained=False).eval()
    with torch.no_grad():
        probs = model(chelsea_batch(224)).softmax(-1)[0]
    assert float(probs[list(CAT_CLASSES)].sum()) < 0.2


@pytest.mark.parametrize("head", ["linear", "mlp", "ordinal"])
def test_heads_give_distributions_and_train(head):
    torch.manual_seed(0)
    h = build_head(head, 16, 7, dropout=0.0)
    x, y = torch.randn(64, 16) * 0.3, torch.randint(0, 7, (64,))
    x[:, 0] = y * 2.0  # a signal that grows with the count
    opt = torch.optim.Adam(h.parameters(), 0.05)
    first = None
    for _ in range(200):
        loss = h.loss(h(x), y, 0.1)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    h.eval()
    probs = h.probs(h(x))
    assert torch.allclose(probs.sum(-1), torch.ones(64), atol=1e-5) and (probs >= 0).all()
    assert float(loss) < first * 0.6
    assert (probs.argmax(-1) == y).float().mean() > 0.75


def test_ordinal_cumulative_probabilities_are_monotone():
    h = build_head("ordinal", 8, 7).eval()
    out = h(torch.randn(32, 8))
    above = torch.sigmoid(out)
    assert (above[:, 1:] <= above[:, :-1] + 1e-6).all()


def test_probability_model_and_the_result_shape():
    model = CountingModel(ModelConfig(backbone="resnet18", head="linear", pretrained=False)).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        plain = ProbabilityModel(model, tta=False)(x)
        tta = ProbabilityModel(model, tta=True)(x)
        mirrored = ProbabilityModel(model, tta=False)(torch.flip(x, dims=[-1]))
    assert plain.shape == (3, 7) and torch.allclose(plain.sum(-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(tta, (plain + mirrored) / 2, atol=1e-6)  # TTA: the mean of the photo's and its mirror's
    assert not torch.allclose(tta, plain)
    results = Prediction.of(LabelSpace(), plain.numpy(), "argmax").rows()
    assert len(results) == 3
    for row, r in zip(plain.numpy(), results):
        assert set(r) == {"count", "label", "confidence", "expected_count", "probabilities"}
        assert isinstance(r["count"], int) and r["label"] == LabelSpace().names[int(row.argmax())]
        assert r["count"] == int(row.argmax()) and r["confidence"] == pytest.approx(row.max(), abs=1e-4)
        assert r["expected_count"] == pytest.approx(float(row @ np.arange(7)), abs=1e-3)
        assert list(r["probabilities"]) == ["0", "1", "2", "3", "4", "5", "6+"]
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-3)


def test_the_overflow_class_is_counted_as_max_count_plus_one():
    space = LabelSpace(1, 5, overflow=True)  # classes 1..5 and "6+"
    probs = np.array([[0.0, 0.0, 0.0, 0.0, 0.1, 0.9], [0.7, 0.3, 0.0, 0.0, 0.0, 0.0]])
    first, second = Prediction.of(space, probs).rows()
    assert (first["count"], first["label"]) == (6, "6+") and first["expected_count"] == pytest.approx(5.9)
    assert (second["count"], second["label"]) == (1, "1") and second["expected_count"] == pytest.approx(1.3)
    assert space.expected_counts(probs) == pytest.approx([5.9, 1.3])


def test_weights_fingerprint_tells_random_initialisations_apart():
    torch.manual_seed(1)
    a = CountingModel(ModelConfig(backbone="test_efficientnet_gn", pretrained=False))
    torch.manual_seed(1)
    b = CountingModel(ModelConfig(backbone="test_efficientnet_gn", pretrained=False))
    torch.manual_seed(2)
    c = CountingModel(ModelConfig(backbone="test_efficientnet_gn", pretrained=False))
    assert fingerprint(a.backbone) == fingerprint(b.backbone) != fingerprint(c.backbone)
    with torch.no_grad():
        next(iter(b.backbone.parameters())).view(-1)[0] += 1e-3
    assert fingerprint(a.backbone) != fingerprint(b.backbone)


def test_unknown_backbone_and_head_are_refused():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet9000'"):
        build_backbone("resnet9000")
    with pytest.raises(ConfigError, match="unknown head 'softmaxish'"):
        CountingModel(ModelConfig(backbone="resnet18", head="softmaxish", pretrained=False))


def test_weights_file_that_does_not_fit(tmp_path):
    other = build_backbone("resnet18", pretrained=False)[0].state_dict()
    torch.save(other, tmp_path / "r18.pt")
    with pytest.raises(ConfigError, match="weights do not fit this backbone"):
        build_backbone("resnet34", weights=str(tmp_path / "r18.pt"))
    (tmp_path / "junk.pt").write_text("not weights")
    with pytest.raises(ConfigError, match="not a PyTorch weights file"):
        build_backbone("resnet18", weights=str(tmp_path / "junk.pt"))
    model, _, _ = build_backbone("resnet18", weights=str(tmp_path / "r18.pt"))
    assert torch.equal(model.state_dict()["conv1.weight"], other["conv1.weight"])


def test_decodings():
    space = LabelSpace()
    probs = np.array([[0.3, 0.05, 0.05, 0.0, 0.0, 0.0, 0.6], [0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0]])
    assert space.decode(probs, "argmax").tolist() == [6, 3]
    assert space.decode(probs, "median").tolist() == [6, 2]
    assert space.decode(probs, "expected").tolist() == [4, 2]
    assert [r["label"] for r in Prediction.of(space, probs, "median").rows()] == ["6+", "2"]
    assert [r["count"] for r in Prediction.of(space, probs, "expected").rows()] == [4, 2]
    with pytest.raises(ConfigError, match="unknown decoding"):
        space.decode(probs, "mode")
    assert CountingModel(ModelConfig(backbone="resnet18", head="ordinal", pretrained=False)).decode == "median"
    assert ModelConfig(head="linear").decoding == "argmax" and ModelConfig(head="ordinal", decode="expected").decoding == "expected"
