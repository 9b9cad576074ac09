"""Learning-rate schedules, stepped every optimiser step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_multistep(
    optimizer: Optimizer,
    milestones: Sequence[int],
    steps_per_epoch: int,
    unit: Literal["epoch", "step"] = "epoch",
    gamma: float = 0.1,
    warmup_steps: int = 500,
    warmup_factor: float = 0.001,
) -> LambdaLR:
    """Linear warm-up from ``warmup_factor·lr`` over ``warmup_steps``, then ×``gamma`` at
    each milestone. Milestones are in epochs (``unit='epoch'``, the COCO 1x/6x recipes:
    8, 11 of 12) or in optimiser steps (``unit='step'``, the Cityscapes recipe: 18k of 24k).
    """
    if unit not in ("epoch", "step"):
        raise ValueError(f"optim.scheduler.unit={unit!r}: choose epoch or step")
    scale = steps_per_epoch if unit == "epoch" else 1
    steps = sorted(int(m * scale) for m in milestones)

    def factor(step: int) -> float:
        decay = gamma ** sum(step >= m for m in steps)
        if step < warmup_steps:
            alpha = step / warmup_steps
            return decay * (warmup_factor * (1 - alpha) + alpha)
        return decay

    return LambdaLR(optimizer, factor)
