"""Box coders: map ground-truth boxes to regression targets relative to anchors and back.

Both coders share one interface, broadcast over leading dimensions::

    rel = coder.encode(anchors, boxes)   # (..., 4) anchors, (..., 4) boxes -> (..., 4)
    boxes = coder.decode(anchors, rel)   # inverse

so ``anchors`` of shape ``(N, 4)`` can be paired with predictions of shape ``(B, N, 4)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor


class BoxCoder(Protocol):
    """What the losses and the post-processing need from a box coder."""

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor: ...

    def decode(self, anchors: Tensor, rel: Tensor) -> Tensor: ...


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(cx, cy, w, h)`` of xyxy boxes, each of shape ``boxes.shape[:-1]``."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


class DeltaBoxCoder:
    """R-CNN/RetinaNet deltas ``(dx, dy, dw, dh)``.

    ``dx = wx * (gx - ax) / aw``, ``dy = wy * (gy - ay) / ah``,
    ``dw = ww * log(gw / aw)``, ``dh = wh * log(gh / ah)`` with ``(x, y)`` centres.
    Decoding clamps ``dw / ww`` and ``dh / wh`` at ``scale_clamp`` so ``exp`` cannot overflow.
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        scale_clamp: float = math.log(1000.0 / 16),
    ) -> None:
        if len(weights) != 4:
            raise ValueError(
                f"box_coders.py: `weights` needs 4 values (wx, wy, ww, wh), got {weights}."
            )
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """Deltas ``(..., 4)`` that turn ``anchors`` into ``boxes``."""
        wx, wy, ww, wh = self.weights
        acx, acy, aw, ah = _centre_size(anchors)
        gcx, gcy, gw, gh = _centre_size(boxes)
        dx = wx * (gcx - acx) / aw
        dy = wy * (gcy - acy) / ah
        dw = ww * torch.log(gw / aw)
        dh = wh * torch.log(gh / ah)
        return torch.stack([dx, dy, dw, dh], dim=-1)  # (..., 4)

    def decode(self, anchors: Tensor, rel: Tensor) -> Tensor:
        """Boxes ``(..., 4)`` obtained by applying deltas ``rel`` to ``anchors``."""
        wx, wy, ww, wh = self.weights
        acx, acy, aw, ah = _centre_size(anchors)
        dx = rel[..., 0] / wx
        dy = rel[..., 1] / wy
        dw = (rel[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (rel[..., 3] / wh).clamp(max=self.scale_clamp)
        cx = dx * aw + acx
        cy = dy * ah + acy
        half_w = 0.5 * torch.exp(dw) * aw
        half_h = 0.5 * torch.exp(dh) * ah
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)

    def __repr__(self) -> str:
        return f"DeltaBoxCoder(weights={self.weights}, scale_clamp={self.scale_clamp:.4f})"


class LTRBBoxCoder:
    """FCOS distances ``(l, t, r, b)`` from the anchor centre, divided by the anchor size.

    For FCOS the anchor is the ``stride x stride`` cell of a location, so the
    targets are stride-normalised: ``l = (ax - x1) / aw``, ``t = (ay - y1) / ah``,
    ``r = (x2 - ax) / aw``, ``b = (y2 - ay) / ah``. The head applies its
    ``ReLU * scale`` before decoding; the coder only maps.
    """

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """Normalised distances ``(..., 4)`` from the anchor centres to the box sides."""
        acx, acy, aw, ah = _centre_size(anchors)
        left = (acx - boxes[..., 0]) / aw
        top = (acy - boxes[..., 1]) / ah
        right = (boxes[..., 2] - acx) / aw
        bottom = (boxes[..., 3] - acy) / ah
        return torch.stack([left, top, right, bottom], dim=-1)  # (..., 4)

    def decode(self, anchors: Tensor, rel: Tensor) -> Tensor:
        """Boxes ``(..., 4)`` at normalised distances ``rel`` from the anchor centres."""
        acx, acy, aw, ah = _centre_size(anchors)
        x1 = acx - rel[..., 0] * aw
        y1 = acy - rel[..., 1] * ah
        x2 = acx + rel[..., 2] * aw
        y2 = acy + rel[..., 3] * ah
        return torch.stack([x1, y1, x2, y2], dim=-1)  # (..., 4)

    def __repr__(self) -> str:
        return "LTRBBoxCoder()"
