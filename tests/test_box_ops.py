"""Pairwise IoU for assignment: torchvision's values, a third of its memory."""

from __future__ import annotations

import torch
import torchvision.ops

from benchmarks.bench import tensor_peak_mib
from pointins.box_ops import box_iou


def _boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    corner = torch.rand(n, 2, generator=gen) * 100
    size = torch.rand(n, 2, generator=gen) * 40
    size[::7] = 0.0  # degenerate: zero area
    return torch.cat([corner, corner + size], dim=1)  # (n, 4) xyxy


def test_equals_torchvision_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        gt, anchors = _boxes(13, gen).to(dtype), _boxes(500, gen).to(dtype)
        ours, ref = box_iou(gt, anchors), torchvision.ops.box_iou(gt, anchors)
        assert ours.shape == (13, 500) and ours.dtype == dtype
        assert torch.equal(ours.nan_to_num(-1.0), ref.nan_to_num(-1.0))  # 0/0 pairs alike


def test_holds_three_matrices_at_most() -> None:
    """The point of it: RetinaNet assigns ~60 k anchors per image against every GT."""
    gen = torch.Generator().manual_seed(0)
    gt, anchors = _boxes(32, gen), _boxes(60_000, gen)
    matrix_mib = 32 * 60_000 * 4 / (1 << 20)
    cpu = torch.device("cpu")
    assert tensor_peak_mib(lambda: box_iou(gt, anchors), cpu) <= 3.01 * matrix_mib
    assert tensor_peak_mib(lambda: torchvision.ops.box_iou(gt, anchors), cpu) > 6 * matrix_mib
