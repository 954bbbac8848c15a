"""Backbones load real ImageNet weights; heads give proper distributions; bad settings are refused early."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bintally.errors import ConfigError
from bintally.models import CountingModel, ModelConfig, build_head, efficientnet_lite
from bintally.models.backbones import build_backbone

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


def test_prediction_fields():
    model = CountingModel(ModelConfig(backbone="resnet18", head="linear", pretrained=False)).eval()
    out = model.predict(torch.randn(3, 3, 64, 64))
    assert out["probs"].shape == (3, 7)
    values = torch.arange(7.0)
    assert torch.allclose(out["expected_count"], (out["probs"] * values).sum(-1))
    assert torch.equal(out["count"], out["probs"].argmax(-1))


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
    from bintally.models.model import decode_counts

    probs = torch.tensor([[0.3, 0.05, 0.05, 0.0, 0.0, 0.0, 0.6], [0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0]])
    assert decode_counts(probs, "argmax").tolist() == [6, 3]
    assert decode_counts(probs, "median").tolist() == [6, 2]
    assert decode_counts(probs, "expected").tolist() == [4, 2]
    with pytest.raises(ConfigError, match="unknown decoding"):
        decode_counts(probs, "mode")
    assert CountingModel(ModelConfig(backbone="resnet18", head="ordinal", pretrained=False)).decode == "median"
