"""A torch Dataset over manifest rows, with per-sample seeded augmentation.

Each sample's augmentation is seeded by (seed, epoch, index), so a run gives the same batches
whether it is interrupted and resumed or not, and whatever the number of loader workers.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch.utils.data import Dataset

from bintally.data.transforms import TransformConfig, build_transform, load_rgb


class BinPhotos(Dataset):
    def __init__(self, df: pd.DataFrame, transform: TransformConfig, train: bool, seed: int = 0):
        self.paths = df["path"].tolist()
        self.labels = torch.tensor(df["label"].fillna(-1).astype(int).to_numpy())
        self.transform = build_transform(transform, train)
        self.train = train
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = load_rgb(self.paths[index])
        if self.train:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
                x = self.transform(image)
        else:
            x = self.transform(image)
        return x, self.labels[index], index
