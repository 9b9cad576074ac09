"""Pairwise box IoU for target assignment, at a third of ``torchvision.ops.box_iou``'s memory.

Assignment scores every anchor against every ground-truth box of the batch: a ``(B * G, N)``
matrix with N ~ 60 k anchors per image for RetinaNet on the CPU demo (~200 k at 800x1333).
``torchvision.ops.box_iou`` builds it from ``(G, N, 2)`` corner tensors, their difference
and its clamp, about ten ``(G, N)`` buffers live at once, which would make the assignment
the largest transient of a RetinaNet training step. :func:`box_iou` computes the intersection's
width, then its height, in place: at most three ``(G, N)`` buffers are live. The values are
torchvision's, bit for bit (same operations in the same order).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (M,)


@torch.no_grad()
def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair of ``(G, 4)`` and ``(N, 4)`` xyxy boxes -> ``(G, N)``.

    As ``torchvision.ops.box_iou`` (a zero union gives NaN there and here), without
    gradients: it serves target assignment, whose boxes are constants.
    """
    inter = torch.minimum(boxes1[:, None, 2], boxes2[:, 2])  # (G, N) right edge
    inter.sub_(torch.maximum(boxes1[:, None, 0], boxes2[:, 0])).clamp_(min=0)  # width
    height = torch.minimum(boxes1[:, None, 3], boxes2[:, 3])  # (G, N) bottom edge
    height.sub_(torch.maximum(boxes1[:, None, 1], boxes2[:, 1])).clamp_(min=0)
    inter.mul_(height)  # (G, N) intersection area
    del height
    union = _area(boxes1)[:, None] + _area(boxes2)  # (G, N)
    union.sub_(inter)
    return inter.div_(union)
