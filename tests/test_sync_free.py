"""The sync-free helpers give what the plain (synchronising) operations give."""

import pytest
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


def test_to_device_on_the_cpu_is_the_plain_conversion() -> None:
    out = to_device([1, 2, 3], "cpu", torch.float32)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 2.0, 3.0]
    source = torch.arange(3)
    assert to_device(source, torch.device("cpu")) is source  # nothing copied


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned path needs CUDA")
def test_to_device_pinned_copy_does_not_race_with_the_source() -> None:
    """The non-blocking copy reads a pinned staging buffer: overwriting (or freeing) the
    source right after the call cannot change what lands on the device, and the dtype
    asked for is kept."""
    sources = [torch.arange(1000) * i for i in range(50)]
    outs = [to_device(s, "cuda", torch.float32) for s in sources]
    for s in sources:
        s.fill_(-1)
    torch.cuda.synchronize()
    for i, out in enumerate(outs):
        assert out.is_cuda and out.dtype == torch.float32
        assert torch.equal(out.cpu(), torch.arange(1000, dtype=torch.float32) * i)
    assert to_device([0.5, 2.0], "cuda").tolist() == [0.5, 2.0]
