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
    """(features, label, index); in training one seeded view per epoch, else all views [V, ...].

    Cached stride-16 maps (kept as float16) are also flipped top to bottom at random in training:
    the mirrored view already gives the left-right flip, and neither changes a count.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, train: bool, seed: int = 0):
        self.features, self.labels, self.train, self.seed, self.epoch = features, labels, train, seed, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        if not self.train:
            return self.features[index].float(), self.labels[index], index
        draw = hash((self.seed, self.epoch, index))
        features = self.features[index, draw % self.features.shape[1]].float()
        if features.dim() == 3 and (draw >> 8) % 2:
            features = torch.flip(features, dims=[-2])
        return features, self.labels[index], index


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
    """Backbone features [N, 2, D] (pooled, float32) or [N, 2, C, H, W] (maps, float16) of each photo and its mirror image."""
    backbone.eval()
    loader = photo_loader(BinPhotos(photos, transform, train=False), batch_size, workers)  # leaves the global RNG alone
    out, done = [], 0
    for x, _, index in progress_bar(loader, desc=desc, unit="batch", enabled=progress):
        if len(index) and index[-1] + 1 - done != len(index):  # a photo was left out: the cache must hold every one
            lost = sorted(set(range(done, int(index[-1]) + 1)) - set(index.tolist()))
            raise DataError(photos["path"].iloc[lost[0]], "could not be read while caching features; re-index the data")
        done += len(index)
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        views = torch.stack([backbone(x), backbone(torch.flip(x, dims=[-1]))], 1)
        out.append((views.half() if views.dim() > 3 else views.float()).cpu())  # maps are 3.4 KB a view in float16
    if done != len(photos):
        raise DataError(photos["path"].iloc[done], "could not be read while caching features; re-index the data")
    return torch.cat(out)


def cache_photos(parts) -> pd.DataFrame:
    """The photos one cache file holds: every photo of the given splits once (by content), in sha256 order."""
    photos = pd.concat([p for p in parts if not p.empty]).drop_duplicates("sha256").sort_values("sha256")
    return photos.reset_index(drop=True)


def cached_features(model, parts: dict[str, pd.DataFrame], transform: TransformConfig, config, d) -> FeatureViews:
    """The train and val features, from one cache over every photo of the manifest's splits.

    The cache is keyed by the photos' contents, not by how they are split, so the folds of a
    cross-validation (and re-splits of the same photos) compute the features once.
    """
    photos = cache_photos(parts.values())
    path = cache_dir() / "features" / f"{cache_key(model, transform, photos)}.pt"
    if d.main and not path.exists():
        feats = extract_features(model.backbone, photos, transform, d.device, workers=config.workers,
                                 progress=config.progress, desc="features")
        with atomic_path(path) as tmp:
            torch.save(feats, tmp)
    if d.enabled:
        dist.barrier()
    everything = torch.load(path, weights_only=True, mmap=True)
    row = pd.Series(range(len(photos)), index=photos["sha256"].to_numpy())
    features, labels = {}, {}
    for split in ("train", "val"):
        rows = torch.as_tensor(row[parts[split]["sha256"].to_numpy()].to_numpy())
        features[split] = everything[rows]
        labels[split] = torch.tensor(parts[split]["label"].astype(int).to_numpy())
    return FeatureViews(features, labels)
