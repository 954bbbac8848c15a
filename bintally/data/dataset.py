"""A torch Dataset over manifest rows, with per-sample seeded augmentation.

Each sample's augmentation is seeded by (seed, epoch, index), so a run gives the same batches
whether it is interrupted and resumed or not, and whatever the number of loader workers.
A photo that cannot be read any more is reported on one line and left out of its batch
(`collate_photos`): one bad file never costs an epoch.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch
from torch.utils.data import Dataset, default_collate

from bintally.data.images import decode_image
from bintally.data.transforms import TransformConfig, build_transform
from bintally.errors import DataError

log = logging.getLogger("bintally.data")


class BinPhotos(Dataset):
    def __init__(self, df: pd.DataFrame, transform: TransformConfig, train: bool, seed: int = 0):
        self.paths = df["path"].tolist()
        self.labels = torch.tensor(df["label"].astype("Int64").fillna(-1).astype(int).to_numpy())
        self.transform = build_transform(transform, train)
        self.train = train
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        """(image tensor, label, index); the tensor is None when the photo cannot be read."""
        try:
            image = decode_image(self.paths[index])
        except DataError as e:
            log.warning("%s (skipped)", e)
            return None, self.labels[index], index
        if self.train:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
                x = self.transform(image)
        else:
            x = self.transform(image)
        return x, self.labels[index], index


def collate_photos(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack a batch, leaving out photos that could not be read (the batch may come out smaller, or empty)."""
    good = [item for item in batch if item[0] is not None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return default_collate(good)
