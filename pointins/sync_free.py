"""Small tensor helpers that keep the training step free of host–device syncs on CUDA.

Two innocent-looking calls make the host wait for the GPU to finish everything queued:
``torch.tensor(values, device="cuda")`` (a blocking copy from pageable host memory,
after which PyTorch synchronises the stream) and ``torch.bincount`` (it reads the
input's maximum back to size its output). A training step launches hundreds of small
kernels; each such wait stops the host from queueing the next ones while the GPU works.
On the CPU both helpers are the plain operations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def to_device(
    values: Sequence[float] | Tensor, device: torch.device | str, dtype: torch.dtype | None = None
) -> Tensor:
    """``values`` (Python numbers or a CPU tensor) as a tensor on ``device``, copied
    without waiting for the stream: staged in pinned host memory and copied
    non-blocking. PyTorch's caching host allocator keeps the pinned block alive until
    the copy has run, so the source may go out of scope at once."""
    host = torch.as_tensor(values, dtype=dtype)
    device = torch.device(device)
    if device.type != "cuda" or host.device.type != "cpu":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def count_per_index(index: Tensor, length: int, where: Tensor | None = None) -> Tensor:
    """``(length,)`` long: how often each of ``0 .. length-1`` occurs in ``index`` (only
    counting entries where ``where`` is true). ``torch.bincount(index[where],
    minlength=length)`` for indices below ``length``, without a sync: one
    ``(length, M)`` comparison, meant for a small ``length`` such as a batch's images.
    """
    hits = index[None, :] == torch.arange(length, device=index.device)[:, None]  # (length, M)
    if where is not None:
        hits &= where[None, :]
    return hits.sum(1)
