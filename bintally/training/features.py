"""Frozen-backbone feature cache: features are computed once per (backbone, image size, photos) and reused.

Two views per photo are cached, as-is and mirrored: training picks one per epoch (a flip
augmentation for free), evaluation averages the predictions of both (flip test-time augmentation).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from bintally.data.dataset import BinPhotos, photo_loader
from bintally.data.transforms import PREPROCESS_VERSION, TransformConfig
from bintally.errors import DataError
from bintally.io import atomic_path
from bintally.models.model import fingerprint
from bintally.paths import cache_dir
from bintally.progress import progress_bar

N_VIEWS = 2


class FeatureSet(Dataset):
    """(features, label, index); in training one seeded view per epoch, else all views [V, D]."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, train: bool, seed: int = 0):
        self.features, self.labels, self.train, self.seed, self.epoch = features, labels, train, seed, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        if self.train:
            view = hash((self.seed, self.epoch, index)) % self.features.shape[1]
            return self.features[index, view], self.labels[index], index
        return self.features[index], self.labels[index], index


@dataclass
class FeatureViews:
    features: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]

    def train_dataset(self, seed: int) -> FeatureSet:
        return FeatureSet(self.features["train"], self.labels["train"], train=True, seed=seed)

    def dataset(self, split: str) -> FeatureSet:
        return FeatureSet(self.features[split], self.labels[split], train=False)


def cache_key(model, transform: TransformConfig, photos: pd.DataFrame) -> str:
    """Features depend on the backbone's actual weights (a randomly initialised one differs per seed), the pre-processing and the photos."""
    h = hashlib.sha256()
    h.update(json.dumps([model.config.backbone, fingerprint(model.backbone), transform.to_dict(), PREPROCESS_VERSION]).encode())
    for digest in photos["sha256"]:
        h.update(digest.encode())
    return h.hexdigest()[:24]


@torch.inference_mode()
def extract_features(backbone, photos: pd.DataFrame, transform: TransformConfig, device, batch_size: int = 32,
                     workers: int = 2, progress: bool = True, desc: str = "features") -> torch.Tensor:
    """Backbone features [N, 2, D] of each photo and its mirror image."""
    backbone.eval()
    loader = photo_loader(BinPhotos(photos, transform, train=False), batch_size, workers)  # leaves the global RNG alone
    out, done = [], 0
    for x, _, index in progress_bar(loader, desc=desc, unit="batch", enabled=progress):
        if len(index) and index[-1] + 1 - done != len(index):  # a photo was left out: the cache must hold every one
            lost = sorted(set(range(done, int(index[-1]) + 1)) - set(index.tolist()))
            raise DataError(photos["path"].iloc[lost[0]], "could not be read while caching features; re-index the data")
        done += len(index)
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        out.append(torch.stack([backbone(x), backbone(torch.flip(x, dims=[-1]))], 1).float().cpu())
    if done != len(photos):
        raise DataError(photos["path"].iloc[done], "could not be read while caching features; re-index the data")
    return torch.cat(out)


def cached_features(model, parts: dict[str, pd.DataFrame], transform: TransformConfig, config, d) -> FeatureViews:
    features, labels = {}, {}
    for split, photos in parts.items():
        if photos.empty:
            continue
        path = cache_dir() / "features" / f"{cache_key(model, transform, photos)}.pt"
        if d.main and not path.exists():
            feats = extract_features(model.backbone, photos, transform, d.device, workers=config.workers,
                                     progress=config.progress, desc=f"{split} features")
            with atomic_path(path) as tmp:
                torch.save(feats, tmp)
        if d.enabled:
            dist.barrier()
        features[split] = torch.load(path, weights_only=True)
        labels[split] = torch.tensor(photos["label"].astype(int).to_numpy())
    return FeatureViews(features, labels)
