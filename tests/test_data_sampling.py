"""The training data order: a function of (seed, epoch) only, split between ranks, grouped
by orientation, and resumable mid-epoch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from datamodules.sampling import (
    DistributedGroupedBatchSampler,
    ResumableDataLoader,
    SeededEpochSampler,
    group_into_batches,
)


def _batch_sampler(n=50, epoch=0, rank=0, world_size=1, batch_size=4, groups=None, seed=3):
    sampler = SeededEpochSampler(n, seed=seed)
    sampler.set_epoch(epoch)
    return DistributedGroupedBatchSampler(
        sampler, batch_size, group_ids=groups, rank=rank, world_size=world_size
    )


def _all_ranks(world_size, **kwargs) -> list[list[list[tuple[int, int]]]]:
    """Every rank's batches: ``[rank][batch]`` -> ``[(index, seed), ...]``."""
    return [
        list(_batch_sampler(rank=r, world_size=world_size, **kwargs)) for r in range(world_size)
    ]


def test_same_seed_and_epoch_give_the_same_stream_whatever_the_global_rng():
    a = SeededEpochSampler(50, seed=3)
    a.set_epoch(2)
    first = list(a)
    torch.rand(1000)  # training consumes global RNG in between
    b = SeededEpochSampler(50, seed=3)
    b.set_epoch(2)
    assert list(b) == first


def test_epochs_differ_and_cover_every_index_once():
    s = SeededEpochSampler(50, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(i for i, _ in e0) == list(range(50))
    assert [i for i, _ in e0] != [i for i, _ in e1]
    assert len({seed for _, seed in e0}) == 50


def test_no_shuffle_keeps_order():
    s = SeededEpochSampler(5, shuffle=False)
    assert [i for i, _ in s] == [0, 1, 2, 3, 4]


def test_group_into_batches_fills_in_order_then_leftovers_per_group():
    items = [(i, 100 + i) for i in range(7)]
    groups = [0, 1, 0, 1, 0, 0, 1]
    assert group_into_batches(items, groups, 2) == [
        [(0, 100), (2, 102)],
        [(1, 101), (3, 103)],
        [(4, 104), (5, 105)],
        [(6, 106)],
    ]
    assert group_into_batches(items, None, 3) == [items[:3], items[3:6], items[6:]]


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_ranks_are_disjoint_cover_the_epoch_and_step_equally(world_size):
    groups = [int(i % 3 == 0) for i in range(50)]  # 17 portrait, 33 landscape
    per_rank = _all_ranks(world_size, groups=groups, epoch=1)
    lengths = {len(batches) for batches in per_rank}
    expected = _batch_sampler(world_size=world_size, groups=groups)
    assert lengths == {len(expected)}  # every rank steps as often, as __len__ says
    # batch i of the global list is batch i // world_size of rank i % world_size
    dealt = [per_rank[i % world_size][i // world_size] for i in range(len(expected) * world_size)]
    unpadded = expected.num_global_batches()
    indices = [i for batch in dealt[:unpadded] for i, _ in batch]
    assert sorted(indices) == list(range(50))  # the epoch covers the split exactly once
    assert dealt[unpadded:] == dealt[: len(dealt) - unpadded]  # padding repeats the first ones


def test_every_batch_is_of_one_orientation_and_keeps_sample_seeds():
    groups = [int(i % 3 == 0) for i in range(50)]
    batches = [b for rank in _all_ranks(2, groups=groups) for b in rank]
    assert all(len({groups[i] for i, _ in batch}) == 1 for batch in batches)
    stream = dict(_batch_sampler(groups=groups).sampler)  # index -> seed of the epoch
    assert all(seed == stream[i] for batch in batches for i, seed in batch)


def test_order_is_a_function_of_seed_and_epoch():
    a = _all_ranks(2, epoch=3, groups=[i % 2 for i in range(50)])
    torch.rand(100)
    assert _all_ranks(2, epoch=3, groups=[i % 2 for i in range(50)]) == a
    assert _all_ranks(2, epoch=4, groups=[i % 2 for i in range(50)]) != a
    assert _all_ranks(2, epoch=3, seed=4, groups=[i % 2 for i in range(50)]) != a


def test_set_epoch_reaches_the_order_through_dot_sampler():
    """Lightning sets the epoch on ``loader.batch_sampler.sampler``."""
    from lightning_fabric.utilities.data import _set_sampler_epoch

    batch_sampler = _batch_sampler()
    loader = ResumableDataLoader(_Indices(50), batch_sampler, collate_fn=list)
    _set_sampler_epoch(loader, 0)
    e0 = list(batch_sampler)
    _set_sampler_epoch(loader, 1)
    assert batch_sampler.epoch == 1 and list(batch_sampler) != e0


def test_rank_and_world_size_come_from_torch_distributed_by_default():
    sampler = DistributedGroupedBatchSampler(SeededEpochSampler(10), 2)
    assert (sampler.rank, sampler.world_size) == (0, 1) and len(sampler) == 5


class _Indices(Dataset):
    """dataset[(index, seed)] -> index."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: tuple[int, int]) -> int:
        return key[0]


def _loader(num_workers=0, batches_done=None) -> ResumableDataLoader:
    batch_sampler = _batch_sampler(n=30, groups=[i % 2 for i in range(30)])
    return ResumableDataLoader(
        _Indices(30), batch_sampler, batches_done, collate_fn=list, num_workers=num_workers
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_loader_resumed_mid_epoch_continues_at_the_next_batch(num_workers):
    uninterrupted = _loader()
    uninterrupted.batch_sampler.sampler.set_epoch(2)
    expected = list(uninterrupted)

    progress = {"done": 0}  # Lightning's batch counter; 0 until the checkpoint is restored
    resumed = _loader(num_workers, batches_done=lambda: progress["done"])
    iterator = iter(resumed)  # as Lightning does: the iterator exists before the restore
    progress["done"] = 3  # the checkpoint: 3 batches of epoch 2 trained
    resumed.batch_sampler.sampler.set_epoch(2)
    assert expected[:3] + list(iterator) == expected
    progress["done"] = 0  # the next epoch starts at its beginning
    resumed.batch_sampler.sampler.set_epoch(3)
    assert len(list(resumed)) == len(expected) == len(resumed)
