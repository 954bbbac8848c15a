"""Small training settings and comparisons shared by the training tests."""

from __future__ import annotations

import pytest
import torch

from bintally.training import TrainConfig, train

TINY = dict(backbone="test_efficientnet_gn", pretrained=False, image_size=64, batch_size=16, workers=0,
            progress=False, lr=3e-3, warmup_epochs=0.2, channels_last=False)


def tiny_config(manifest, out, **changes) -> TrainConfig:
    return TrainConfig.from_dict(dict(data=str(manifest), out=str(out)) | TINY | changes)


@pytest.fixture(scope="session")
def two_epoch_run(tiny_manifest, tmp_path_factory):
    """`tiny_config(epochs=2)` trained without a stop: the run that every stopped and resumed run of it must equal."""
    out = tmp_path_factory.mktemp("two-epochs") / "run"
    train(tiny_config(tiny_manifest, out, epochs=2))
    return out


def state_of(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
