"""A torch Dataset over manifest rows, with per-sample seeded augmentation.

Each sample's augmentation is seeded by (seed, epoch, index), so a run gives the same batches
whether it is interrupted and resumed or not, and whatever the number of loader workers.
A photo that cannot be read any more is reported on one line and left out of its batch
(`collate_photos`): one bad file never costs an epoch.
"""

from __future__ import annotations

import logging
import signal
import threading

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

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


def ignore_stop_signals(worker_id: int = 0) -> None:
    """In a loader worker: leave SIGINT/SIGTERM to the main process, which checkpoints and then stops the workers.

    A process-group signal (Ctrl-C, systemd, Slurm, Kubernetes, a spot reclaim) reaches the workers
    too; if they died of it, the main process would fail before it could save anything.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the parent while it forked this worker


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class StopSafeLoader(DataLoader):
    """A DataLoader whose workers cannot die of a stop signal sent while they start.

    A signal that reached a worker between its fork and `ignore_stop_signals` would kill it with the default action (the
    main process then fails, "worker exited unexpectedly"). The main thread blocks the stop signals while the workers
    start; they inherit the block, ignore the signals, then unblock; the main process gets any pending signal after.
    """

    def _get_iterator(self):
        if self.num_workers == 0 or threading.current_thread() is not threading.main_thread():
            return super()._get_iterator()
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super()._get_iterator()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def photo_loader(dataset: Dataset, batch_size: int, workers: int, indices: list[int] | None = None,
                 drop_last: bool = False) -> DataLoader:
    """The DataLoader every stage uses: workers that survive stop signals, unreadable photos left out of batches.

    It has its own generator: creating the iterator must not draw from the global RNG (dropout's),
    or a resumed run would differ from an uninterrupted one.
    """
    return StopSafeLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers, drop_last=drop_last,
                      collate_fn=collate_photos, worker_init_fn=ignore_stop_signals if workers else None,
                      generator=torch.Generator().manual_seed(0), persistent_workers=False)
