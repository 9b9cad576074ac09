"""A training sampler that makes data order and augmentation functions of (seed, epoch).

Each epoch's permutation and each sample's augmentation seed are drawn from a generator
seeded with ``seed + epoch``. Nothing depends on how much global RNG the training
consumed, so a run resumed from a checkpoint sees exactly the batches an uninterrupted
run would, with any number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class SeededEpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)``; the dataset seeds its transforms with ``sample_seed``.

    Lightning calls :meth:`set_epoch` before every epoch (and wraps the sampler for DDP).
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        seeds = torch.randint(2**62, (self.num_samples,), generator=g)
        yield from zip(order.tolist(), seeds.tolist(), strict=True)
