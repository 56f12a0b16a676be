"""Reproducible training order and augmentation, so that a run can stop and resume mid-epoch exactly.

The order of an epoch depends only on (seed, epoch) (torch's DistributedSampler: a seeded permutation,
padded to a multiple of the number of processes and dealt out round-robin), and the augmentation of a
sample only on (seed, epoch, index): neither depends on DataLoader workers, on the global RNG or on
where the run was interrupted.
"""
from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np
from torch.utils.data import Dataset, DistributedSampler

from sharpose.data import TopDownDataset


class ResumableSampler(DistributedSampler):
    """DistributedSampler yielding (epoch, index) pairs and able to start part-way into an epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch to draw, and how many of this process's samples of it were already used."""
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in islice(super().__iter__(), self.start, None):
            yield self.epoch, index

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededSamples(Dataset):
    """A top-down dataset indexed by (epoch, index), augmenting each sample with a generator seeded
    from (seed, epoch, index)."""

    def __init__(self, dataset: TopDownDataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        return self.dataset.get_sample(index, np.random.default_rng((self.seed, epoch, index)))
