"""Training data order: a function of (seed, epoch), split between processes, resumable.

Each epoch's permutation and each sample's augmentation seed are drawn from a generator
seeded with ``seed + epoch`` (:class:`SeededEpochSampler`). Nothing depends on how much
global RNG the training consumed, on the number of DataLoader workers, or on the number
of processes.

:class:`DistributedGroupedBatchSampler` forms the epoch's batches from that one global
stream, each batch of one aspect-ratio group (landscape or portrait: detectron2's
grouping, which pads a third fewer pixels on mixed data), and deals batch ``i`` to rank
``i % world_size``. Every process computes the same global batches; ranks read
``torch.distributed`` when they iterate, so no sampler wrapper of Lightning's is needed
(``trainer.use_distributed_sampler=false``).

:class:`ResumableDataLoader` continues an epoch that a checkpoint ended inside of at the
next batch of the same order, instead of replaying the epoch from its start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

Item = tuple[int, int]  # (dataset index, augmentation seed)


class SeededEpochSampler(Sampler[Item]):
    """Yields ``(index, sample_seed)``; the dataset seeds its transforms with ``sample_seed``.

    Lightning calls :meth:`set_epoch` before every epoch (as the ``.sampler`` of a batch
    sampler, too).
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

    def __iter__(self) -> Iterator[Item]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        seeds = torch.randint(2**62, (self.num_samples,), generator=g).tolist()
        yield from zip(order, seeds, strict=True)


def group_into_batches(
    items: Sequence[Item], group_ids: Sequence[int] | None, batch_size: int
) -> list[list[Item]]:
    """Batches of ``batch_size`` items of one group each, in the order they fill
    (detectron2's rule), then each group's leftover as one smaller batch.

    ``group_ids[index]`` is the group of dataset index ``index``; without groups, the
    items are cut into consecutive batches.
    """
    if group_ids is None:
        return [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    buckets: dict[int, list[Item]] = {}
    batches: list[list[Item]] = []
    for item in items:
        bucket = buckets.setdefault(group_ids[item[0]], [])
        bucket.append(item)
        if len(bucket) == batch_size:
            batches.append(bucket.copy())
            bucket.clear()
    batches.extend(bucket for bucket in buckets.values() if bucket)
    return batches


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process in ``torch.distributed`` ((0, 1) outside it)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class DistributedGroupedBatchSampler(Sampler[list[Item]]):
    """This rank's batches of the epoch: one global order, grouped, dealt round-robin.

    The global stream of ``sampler`` (a :class:`SeededEpochSampler`; its ``set_epoch``
    picks the epoch) is cut into batches of one group each (:func:`group_into_batches`).
    The list of batches is padded with its own first batches to a multiple of the world
    size, as torch's ``DistributedSampler`` pads, so that every rank steps equally often;
    batch ``i`` goes to rank ``i % world_size``. The epoch thus covers the split, each
    sample keeping its augmentation seed.

    ``rank`` and ``world_size`` default to ``torch.distributed``'s, read when iterating.
    An iteration starts at this rank's batch ``start`` (0 unless a resumed loader sets it).
    """

    def __init__(
        self,
        sampler: SeededEpochSampler,
        batch_size: int,
        group_ids: Sequence[int] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: give at least 1 image per batch")
        if group_ids is not None and len(group_ids) != len(sampler):
            raise ValueError(f"{len(group_ids)} group ids for {len(sampler)} samples")
        self.sampler = sampler
        self.batch_size = batch_size
        self.group_ids = list(group_ids) if group_ids is not None else None
        self._rank = rank
        self._world_size = world_size
        self.start = 0

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def rank(self) -> int:
        return distributed_rank()[0] if self._rank is None else self._rank

    @property
    def world_size(self) -> int:
        return distributed_rank()[1] if self._world_size is None else self._world_size

    def num_global_batches(self) -> int:
        """Batches of an epoch before padding: the same every epoch (group sizes are fixed)."""
        if self.group_ids is None:
            return -(-len(self.sampler) // self.batch_size)
        sizes: dict[int, int] = {}
        for group in self.group_ids:
            sizes[group] = sizes.get(group, 0) + 1
        return sum(-(-n // self.batch_size) for n in sizes.values())

    def __len__(self) -> int:
        """This rank's batches per epoch (all ranks have as many)."""
        return -(-self.num_global_batches() // self.world_size)

    def global_batches(self) -> list[list[Item]]:
        """The epoch's batches of all ranks, before padding."""
        return group_into_batches(list(self.sampler), self.group_ids, self.batch_size)

    def rank_batches(self) -> list[list[Item]]:
        """This rank's batches of the epoch, in order."""
        batches = self.global_batches()
        world_size = self.world_size
        total = len(self) * world_size
        padded = [batches[i % len(batches)] for i in range(total)] if batches else []
        return padded[self.rank :: world_size]

    def __iter__(self) -> Iterator[list[Item]]:
        # a list, not a generator: a DataLoader iterates its batch sampler when it creates
        # its iterator (twice with workers), and that is when the epoch and start are read
        return iter(self.rank_batches()[self.start :])


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`DistributedGroupedBatchSampler` that continues an epoch
    a checkpoint ended inside of.

    ``batches_done()`` is read when the epoch's first batch is fetched: the number of this
    epoch's batches trained already (0 when an epoch starts). The datamodule passes
    Lightning's batch counter, which a mid-epoch checkpoint restores; the batch sampler
    then starts after those batches, so the run trains the batch the interrupted run would
    have trained next, in the same order.

    Iterating starts at the first ``next()``, not at ``iter()``: Lightning creates the
    iterator before it restores a checkpoint's counters and sets the epoch of a resumed
    run, and workers read their indices as soon as the underlying iterator exists.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_sampler: DistributedGroupedBatchSampler,
        batches_done: Callable[[], int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self.batches_done = batches_done

    def __iter__(self) -> Iterator[Any]:
        sampler = self.batch_sampler
        sampler.start = self.batches_done() if self.batches_done is not None else 0
        try:
            iterator = super().__iter__()  # iterates the batch sampler (twice with workers)
        finally:
            sampler.start = 0
        yield from iterator
