"""Evaluate once on rank 0 with everyone's results, and give every rank the outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

Local = TypeVar("Local")
Result = TypeVar("Result")


def evaluate_on_rank0(local: Local, evaluate: Callable[[list[Local]], Result]) -> Result:
    """Gather every rank's ``local`` on rank 0, run ``evaluate(parts)`` there once (``parts``
    in rank order) and return its result on every rank.

    Outside ``torch.distributed`` this is ``evaluate([local])``. An exception raised by
    ``evaluate`` is re-raised on every rank instead of leaving the others waiting.
    ``gather`` (not ``all_gather``): only rank 0 holds everyone's results in memory.
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    parts: list[Any] | None = [local]
    if distributed:
        parts = [None] * dist.get_world_size() if rank == 0 else None
        dist.gather_object(local, parts, dst=0)
    payload: list[Any] = [None]
    if rank == 0:
        try:
            payload[0] = evaluate(parts)
        except Exception as error:  # noqa: BLE001 - re-raised below, on every rank
            payload[0] = error
    if distributed:
        dist.broadcast_object_list(payload, src=0)
    if isinstance(payload[0], Exception):
        raise payload[0]
    return payload[0]
