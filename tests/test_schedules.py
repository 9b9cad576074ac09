"""Learning-rate schedule: linear warm-up, then x gamma at the milestones (epochs)."""

from __future__ import annotations

import pytest
import torch

from pointins.engine.schedules import milestones_past_the_end, scale_to_batch, warmup_multistep


def _lrs(steps: int, **kw) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_multistep(opt, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_epoch_milestones_and_warmup():
    lrs = _lrs(40, milestones=[2, 3], steps_per_epoch=10, warmup_steps=4, warmup_factor=0.2)
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[2] == pytest.approx(0.2 * 0.5 + 0.5)  # halfway through the warm-up
    assert lrs[4:20] == pytest.approx([1.0] * 16)
    assert lrs[20:30] == pytest.approx([0.1] * 10)
    assert lrs[30:] == pytest.approx([0.01] * 10)


def test_fractional_epoch_milestones_cityscapes_style():
    # 18 of 24 steps at 10 steps per epoch: epoch 1.8
    lrs = _lrs(24, milestones=[1.8], steps_per_epoch=10, warmup_steps=0)
    assert lrs[17] == pytest.approx(1.0) and lrs[18] == pytest.approx(0.1)


def test_linear_scaling_rule_keeps_the_images_per_warm_up():
    # the paper's batch 16 run as 8 GPUs x 1 image: half the rate, twice the warm-up steps
    assert scale_to_batch(5e-5, 500, total_batch=8, reference_batch=16) == (2.5e-5, 1000)
    assert scale_to_batch(5e-5, 500, total_batch=16, reference_batch=16) == (5e-5, 500)
    lr, warmup = scale_to_batch(5e-4, 500, total_batch=32, reference_batch=8)
    assert lr == pytest.approx(2e-3) and warmup == 125
    with pytest.raises(ValueError, match="optim.reference_batch"):
        scale_to_batch(1e-3, 10, total_batch=4, reference_batch=0)


def test_milestones_past_the_end_are_found():
    # the 1x recipe's epochs 8 and 11 in a 2-epoch run of 100 steps per epoch
    assert milestones_past_the_end([8, 11], 100, total_steps=200) == [8, 11]
    assert milestones_past_the_end([8, 11], 100, total_steps=1200) == []
    assert milestones_past_the_end([1.5, 2], 100, total_steps=200) == [2]
