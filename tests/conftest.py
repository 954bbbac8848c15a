"""Shared fixtures: real ABID photos from the local mirror beside the checkout."""

from __future__ import annotations

import os

# One thread per process for torch (here and in every `bintally` process a test starts): the tiny test models gain
# nothing from more, two threads per process on a shared 2-core machine made training an order of magnitude slower,
# and runs that must match bit for bit (a resumed run and its uninterrupted twin) need the same count everywhere.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil  # noqa: E402
from pathlib import Path

import pandas as pd
import pytest

from bintally.data import build_manifest, split_manifest, write_manifest
from bintally.paths import SAMPLE_DIR
from tests.helpers import required_or_skip

REPO = Path(__file__).resolve().parents[1]
MIRROR = REPO.parent / "shared" / "abid"


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Keep the sample manifest cache out of the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BINTALLY_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def torch_threads_kept():
    """Each test starts with torch's thread count as the session began: an in-process `bintally tune` sets it for its
    trials and keeps it, and a thread count changes a training run's floating-point sums (resumed runs must match)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def process_switches_kept():
    """Each test starts with the progress switch and bintally's log levels as the session began: a command run in this
    process (Typer's CliRunner, say) with --no-progress switches bars off for the process, and a later test's bars and
    its child processes' would stay off."""
    import logging

    from bintally.progress import ENV

    switch = os.environ.get(ENV)
    levels = {name: logging.getLogger(name).level for name in ("bintally", "bintally.train", "bintally.health")}
    yield
    if switch is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = switch
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The local ABID mirror beside the checkout (README.md, "Tests", says where it comes from)."""
    if not (MIRROR / "bin-images").is_dir():
        required_or_skip(f"the ABID mirror is missing at {MIRROR} (README.md, section Tests, says how to get it)")
    return MIRROR


def copy_bucket(mirror: Path, dest: Path, ids: list[str]) -> Path:
    """A bucket-layout folder holding the given real photos and their metadata."""
    (dest / "bin-images").mkdir(parents=True)
    (dest / "metadata").mkdir(parents=True)
    for i in ids:
        shutil.copy(mirror / "bin-images" / f"{i}.jpg", dest / "bin-images")
        shutil.copy(mirror / "metadata" / f"{i}.json", dest / "metadata")
    return dest


@pytest.fixture
def small_bucket(mirror, tmp_path) -> Path:
    """30 real photos, including "00100" and "100", which are different images."""
    ids = [f"{i:05d}" for i in range(100, 120)] + ["1", "10", "100"] + [str(i) for i in range(121, 128)]
    return copy_bucket(mirror, tmp_path / "bucket", ids)


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory):
    """175 train / 56 val real photos from the bundled sample, every class in both."""
    df = split_manifest(build_manifest(SAMPLE_DIR, progress=False))
    picks = [g.head(25 if split == "train" else 8) for (split, _), g in df[df["split"] != "test"].groupby(["split", "label"])]
    small = pd.concat(picks)
    small.attrs = df.attrs
    path = tmp_path_factory.mktemp("data") / "tiny.parquet"
    write_manifest(small, path, info=df.attrs["info"])
    return path


def make_artifact(out: Path, backbone: str = "test_efficientnet_gn", image_size: int = 64, head: str = "linear",
                  pretrained: bool = False, seed: int = 0):
    """A model artifact written as training writes one (untrained head: its counts are arbitrary but deterministic)."""
    import torch

    from bintally.data.transforms import TransformConfig
    from bintally.models.artifact import save_model
    from bintally.models.config import ModelConfig
    from bintally.models.model import CountingModel

    torch.manual_seed(seed)
    model = CountingModel(ModelConfig(backbone=backbone, head=head, pretrained=pretrained)).eval()
    transform = TransformConfig(image_size, model.normalization.mean, model.normalization.std)
    return save_model(out, model, transform, tta=True, train_config={"backbone": backbone, "image_size": image_size},
                      metrics={"val_accuracy": 0.0})


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    """A small model artifact (timm's test_efficientnet_gn, 64 px): fast to load, export and serve."""
    return make_artifact(tmp_path_factory.mktemp("tiny-model") / "model")


from tests.postgres import fresh_pg_db, postgres_server, postgres_url  # noqa: E402,F401  (a throwaway PostgreSQL server)
from tests.servers import audit_server, protocol_server, serve, serve_module, serve_process, serve_session  # noqa: E402,F401
from tests.training_helpers import two_epoch_run  # noqa: E402,F401
