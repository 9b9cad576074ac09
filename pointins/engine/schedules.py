"""Learning-rate schedules, stepped every optimiser step."""

from __future__ import annotations

from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_multistep(
    optimizer: Optimizer,
    milestones: Sequence[float],
    steps_per_epoch: int,
    gamma: float = 0.1,
    warmup_steps: int = 500,
    warmup_factor: float = 0.001,
) -> LambdaLR:
    """Linear warm-up from ``warmup_factor·lr`` over ``warmup_steps``, then ×``gamma`` at
    each milestone. Milestones are in epochs, fractions allowed (the COCO 1x recipe: 8 and
    11 of 12; Cityscapes: the paper's 18k of 24k iterations at batch 8 are epoch 48.4 of
    64.5), so they mark the same point of the data whatever the batch
    (``optim.auto_scale_lr``).
    """
    steps = sorted(milestone_steps(milestones, steps_per_epoch))

    def factor(step: int) -> float:
        decay = gamma ** sum(step >= m for m in steps)
        if step < warmup_steps:
            alpha = step / warmup_steps
            return decay * (warmup_factor * (1 - alpha) + alpha)
        return decay

    return LambdaLR(optimizer, factor)


def scale_to_batch(
    lr: float, warmup_steps: int, total_batch: int, reference_batch: int
) -> tuple[float, int]:
    """The linear scaling rule (Goyal et al., 2017; detectron2's ``REFERENCE_WORLD_SIZE``,
    mmdet's ``auto_scale_lr``): a recipe written for ``reference_batch`` images per step,
    run at ``total_batch``, gets ``lr × total/reference`` and a warm-up of as many images,
    ``warmup_steps × reference/total`` steps. Epoch milestones need no change."""
    if total_batch < 1 or reference_batch < 1:
        raise ValueError(
            f"optim.reference_batch={reference_batch} and the total batch {total_batch} must "
            "be positive"
        )
    factor = total_batch / reference_batch
    return lr * factor, max(0, round(warmup_steps / factor))


def milestones_past_the_end(
    milestones: Sequence[float], steps_per_epoch: int, total_steps: int
) -> list[float]:
    """The milestones a schedule of ``total_steps`` never reaches (its rate never decays
    there: e.g. the 1x recipe's epochs 8 and 11 with ``trainer.max_epochs=2``)."""
    steps = milestone_steps(milestones, steps_per_epoch)
    return [m for m, step in zip(milestones, steps, strict=True) if step >= total_steps]


def milestone_steps(milestones: Sequence[float], steps_per_epoch: int) -> list[int]:
    """The optimiser step at which each milestone (in epochs) takes effect."""
    return [int(m * steps_per_epoch) for m in milestones]
