"""The sync-free helpers give what the plain (synchronising) operations give."""

import torch

from pointins.sync_free import count_per_index, to_device


def test_count_per_index_is_bincount() -> None:
    index = torch.tensor([0, 2, 2, 1, 2, 0])
    where = torch.tensor([True, True, False, True, True, False])
    assert torch.equal(count_per_index(index, 4), torch.bincount(index, minlength=4))
    assert torch.equal(
        count_per_index(index, 4, where=where), torch.bincount(index[where], minlength=4)
    )
    assert torch.equal(count_per_index(index[:0], 3), torch.zeros(3, dtype=torch.long))


def test_to_device_keeps_values_and_dtype() -> None:
    out = to_device([1, 2, 3], "cpu", torch.float32)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 2.0, 3.0]
    assert to_device(torch.arange(3), torch.device("cpu")).tolist() == [0, 1, 2]
