"""Target assignment: which ground-truth box (if any) every anchor learns from.

All assigners follow torchvision's matcher contract and work on a whole batch at
once, with the ground truth padded to ``(B, G_max)`` by :func:`pad_targets`:

``matched_idxs`` ``(B, N)`` long: ``>= 0`` the matched GT's index *within its image*,
``-1`` background, ``-2`` ignored (between thresholds; IoU assigner only).

``N`` is the number of anchors of all levels concatenated (see ``anchors.py``).

Every assigner also decides which anchors qualify for PointINS's mask sampling (the
*anchor condition* of the paper's §3.3): :meth:`mask_anchor_condition` returns ``(B, N)``
long, the GT an anchor qualifies for, or ``-1``. It lives here because it is a
statement about anchors and ground truth, made with the assigner's own rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from pointins.box_ops import box_iou
from pointins.structures import Assignment
from pointins.sync_free import to_device

BACKGROUND = -1
IGNORED = -2


def pad_targets(targets: Sequence[dict[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Pad per-image ground truth to a batch.

    Args:
        targets: one dict per image with ``"boxes"`` ``(G_i, 4)`` xyxy and ``"labels"`` ``(G_i,)``.

    Returns:
        ``gt_boxes`` ``(B, G_max, 4)`` (zeros where padded), ``gt_labels`` ``(B, G_max)``
        long (``-1`` where padded) and ``gt_valid`` ``(B, G_max)`` bool.
    """
    if len(targets) == 0:
        raise ValueError("assigners.py: pad_targets got an empty list; pass one dict per image.")
    boxes = [t["boxes"].reshape(-1, 4) for t in targets]
    labels = [t["labels"].reshape(-1).long() for t in targets]
    device, dtype = boxes[0].device, boxes[0].dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    gt_boxes = pad_sequence([b.to(dtype) for b in boxes], batch_first=True)  # (B, G_max, 4)
    gt_labels = pad_sequence(labels, batch_first=True, padding_value=-1)  # (B, G_max)
    g_max = gt_boxes.shape[1]
    counts = to_device([b.shape[0] for b in boxes], device)  # (B,)
    gt_valid = torch.arange(g_max, device=device)[None, :] < counts[:, None]  # (B, G_max)
    return gt_boxes, gt_labels, gt_valid


def gather_assigned(matched_idxs: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> Assignment:
    """Fill the matched GT box and label of every anchor.

    Args:
        matched_idxs: ``(B, N)`` long, the assigner's output.
        gt_boxes: ``(B, G, 4)``; gt_labels: ``(B, G)``.

    Returns:
        :class:`Assignment` whose ``gt_boxes`` ``(B, N, 4)`` and ``gt_labels`` ``(B, N)`` are
        those of the matched GT; where ``matched_idxs < 0`` they are GT 0's (or zeros
        when the batch has no GT at all) and must not be used.
    """
    batch, num = matched_idxs.shape
    if gt_boxes.shape[1] == 0:
        boxes = gt_boxes.new_zeros(batch, num, 4)
        labels = torch.zeros(batch, num, dtype=torch.long, device=matched_idxs.device)
        return Assignment(matched_idxs=matched_idxs, gt_boxes=boxes, gt_labels=labels)
    idx = matched_idxs.clamp(min=0)  # (B, N)
    boxes = torch.gather(gt_boxes, 1, idx[..., None].expand(batch, num, 4))  # (B, N, 4)
    labels = torch.gather(gt_labels.long(), 1, idx)  # (B, N)
    return Assignment(matched_idxs=matched_idxs, gt_boxes=boxes, gt_labels=labels)


def anchor_condition_iou(
    anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, thresh: float = 0.5
) -> Tensor:
    """Anchor condition by IoU: the anchor's best GT, if ``IoU(anchor, best GT) > thresh``.

    Args:
        anchors: ``(N, 4)`` anchors of all levels, xyxy.
        gt_boxes: ``(B, G, 4)`` padded GT boxes.
        gt_valid: ``(B, G)`` bool, False where padded.
        thresh: ``t_a`` (strict inequality, paper §3.3).

    Returns:
        ``anchor_gt`` ``(B, N)`` long: GT index within the image, ``-1`` where no GT qualifies.
    """
    batch, num_gt = gt_valid.shape
    num = anchors.shape[0]
    if num_gt == 0:
        return torch.full((batch, num), -1, dtype=torch.long, device=anchors.device)
    iou = box_iou(gt_boxes.reshape(-1, 4).to(anchors.dtype), anchors)  # (B * G, N)
    iou = iou.reshape(batch, num_gt, num)  # (B, G, N)
    iou.masked_fill_(~gt_valid[..., None], -1.0)  # padded GTs never win
    best_iou, best_gt = iou.max(dim=1)  # (B, N), (B, N)
    return torch.where(best_iou > thresh, best_gt, torch.full_like(best_gt, -1))


def anchor_condition_from_matches(matched_idxs: Tensor) -> Tensor:
    """Anchor condition by assignment: the location is a positive for the GT it matched.

    Args:
        matched_idxs: ``(B, N)`` long, torchvision's matcher contract
            (``>= 0`` GT index, ``-1`` background, ``-2`` ignored).

    Returns:
        ``anchor_gt`` ``(B, N)`` long: the matched GT where ``matched_idxs >= 0``, else ``-1``.
    """
    return matched_idxs.long().clamp(min=-1)


class PositivesQualify:
    """Mixin of the assigners whose own positives are the mask anchor condition (FCOS: a
    location has no anchor box, paper §3.3; ATSS: its adaptive threshold already is an IoU
    condition), so ``t_a`` does not apply."""

    def mask_anchor_condition(
        self,
        anchors: Tensor,
        matched_idxs: Tensor,
        gt_boxes: Tensor,
        gt_valid: Tensor,
        anchor_iou: float,
    ) -> Tensor:
        return anchor_condition_from_matches(matched_idxs)


class IoUAssigner:
    """RetinaNet labelling by IoU, torchvision's ``Matcher`` batched over images.

    An anchor whose best IoU (over its image's GTs) is ``>= fg_iou`` matches that GT,
    ``< bg_iou`` is background, otherwise ignored. With ``allow_low_quality_matches``,
    for every GT the anchors whose IoU equals that GT's highest IoU (ties included)
    are matched even if below ``fg_iou`` — to their own best GT, exactly as
    torchvision's ``set_low_quality_matches_``. Unlike torchvision, a GT whose
    highest IoU is 0 (it overlaps no anchor) creates no such match, and padded GTs
    never match.
    """

    def __init__(
        self, fg_iou: float = 0.5, bg_iou: float = 0.4, allow_low_quality_matches: bool = True
    ) -> None:
        if bg_iou > fg_iou:
            raise ValueError(f"assigners.py: need bg_iou <= fg_iou, got {bg_iou} > {fg_iou}.")
        self.fg_iou = float(fg_iou)
        self.bg_iou = float(bg_iou)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_valid: Tensor,
        level_ids: Tensor | None = None,
    ) -> Tensor:
        """Match ``anchors`` ``(N, 4)`` to ``gt_boxes`` ``(B, G, 4)`` (mask ``gt_valid``);
        ``level_ids`` is not needed (every level is matched alike).

        Returns ``matched_idxs`` ``(B, N)`` long. Memory: one ``(B, G, N)`` IoU matrix.
        """
        batch, num_gt = gt_valid.shape
        num_anchors = anchors.shape[0]
        if num_gt == 0:
            return anchors.new_full((batch, num_anchors), BACKGROUND, dtype=torch.long)
        iou = box_iou(gt_boxes.reshape(-1, 4).to(anchors.dtype), anchors)  # (B * G, N)
        iou = iou.reshape(batch, num_gt, num_anchors)  # (B, G, N)
        iou.masked_fill_(~gt_valid[..., None], -1.0)  # padded GTs never win

        best_iou, best_gt = iou.max(dim=1)  # (B, N) each
        matched = torch.where(best_iou < self.fg_iou, IGNORED, best_gt)
        matched = torch.where(best_iou < self.bg_iou, BACKGROUND, matched)
        if self.allow_low_quality_matches:
            highest_per_gt = iou.max(dim=2, keepdim=True).values  # (B, G, 1)
            is_best = (iou == highest_per_gt) & (highest_per_gt > 0)  # (B, G, N)
            matched = torch.where(is_best.any(dim=1), best_gt, matched)
        return matched

    def mask_anchor_condition(
        self,
        anchors: Tensor,
        matched_idxs: Tensor,
        gt_boxes: Tensor,
        gt_valid: Tensor,
        anchor_iou: float,
    ) -> Tensor:
        """``IoU(anchor, GT) > t_a`` (paper §3.3), independent of the training match."""
        return anchor_condition_iou(anchors, gt_boxes, gt_valid, anchor_iou)

    def __repr__(self) -> str:
        return (
            f"IoUAssigner(fg_iou={self.fg_iou}, bg_iou={self.bg_iou}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )


#: FCOS's per-level ranges of max(l, t, r, b) for P3..P7 (paper §3.1)
FCOS_SIZE_RANGES = ((0, 64), (64, 128), (128, 256), (256, 512), (512, math.inf))


class FCOSAssigner(PositivesQualify):
    """FCOS labelling of locations.

    A location is positive for a GT iff

    * it lies strictly inside the GT box,
    * it lies strictly inside the centre region, the GT centre ± ``radius * stride``
      clipped to the box (with the previous condition, ``|x - gx| < radius * stride``
      and ``|y - gy| < radius * stride`` is the same test), and
    * ``max(l, t, r, b)`` of the location w.r.t. the GT lies in its level's size
      range ``[lo, hi]``.

    A location positive for several GTs takes the one of smallest area. The stride of
    a location is read from its cell-box width (see :class:`PointGenerator`).
    """

    def __init__(
        self,
        center_sampling_radius: float = 1.5,
        size_ranges: Sequence[Sequence[float]] = FCOS_SIZE_RANGES,
    ) -> None:
        self.center_sampling_radius = float(center_sampling_radius)
        # (L, 2) rows (lo, hi) of max(l, t, r, b), one per level
        self.size_ranges = torch.tensor([[float(lo), float(hi)] for lo, hi in size_ranges])

    def __call__(
        self, anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, level_ids: Tensor
    ) -> Tensor:
        """Match locations to GTs.

        Args:
            anchors: ``(N, 4)`` cell boxes of the locations (all levels concatenated).
            gt_boxes: ``(B, G, 4)``; gt_valid: ``(B, G)`` bool.
            level_ids: ``(N,)`` long level index of every location; indexes ``size_ranges``.

        Returns:
            ``matched_idxs`` ``(B, N)`` long, ``-1`` for background (never ``-2``).
            Memory: a few ``(B, G, N)`` tensors.
        """
        batch, num_gt = gt_valid.shape
        num_loc = anchors.shape[0]
        if num_gt == 0:
            return anchors.new_full((batch, num_loc), BACKGROUND, dtype=torch.long)
        gt_boxes = gt_boxes.to(anchors.dtype)
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # (N, 2)
        strides = anchors[:, 2] - anchors[:, 0]  # (N,)
        px, py = centres[:, 0], centres[:, 1]  # (N,) each
        x1, y1, x2, y2 = (c[..., None] for c in gt_boxes.unbind(dim=-1))  # (B, G, 1) each
        ltrb = torch.stack([px - x1, py - y1, x2 - px, y2 - py], dim=-1)  # (B, G, N, 4)
        inside_box = ltrb.min(dim=-1).values > 0  # (B, G, N)

        radius = self.center_sampling_radius * strides  # (N,)
        inside_centre = ((px - (x1 + x2) / 2).abs() < radius) & (
            (py - (y1 + y2) / 2).abs() < radius
        )  # (B, G, N)

        ranges = to_device(self.size_ranges, anchors.device, anchors.dtype)[level_ids]  # (N, 2)
        max_dist = ltrb.max(dim=-1).values  # (B, G, N)
        in_range = (max_dist >= ranges[:, 0]) & (max_dist <= ranges[:, 1])  # (B, G, N)

        positive = inside_box & inside_centre & in_range & gt_valid[..., None]  # (B, G, N)
        area = (x2 - x1) * (y2 - y1)  # (B, G, 1)
        cost = torch.where(positive, area, area.new_tensor(math.inf))  # (B, G, N)
        min_area, best_gt = cost.min(dim=1)  # (B, N) each
        return torch.where(torch.isfinite(min_area), best_gt, BACKGROUND)

    def __repr__(self) -> str:
        return (
            f"FCOSAssigner(center_sampling_radius={self.center_sampling_radius}, "
            f"size_ranges={self.size_ranges.tolist()})"
        )


class ATSSAssigner(PositivesQualify):
    """ATSS (Zhang et al., CVPR 2020): an IoU threshold adapted to every GT.

    For each GT:

    * on every level, the ``topk`` anchors whose centres lie closest to the GT's centre
      (L2 distance) are its *candidates* (all of a level's anchors if it has fewer);
    * its threshold is the mean plus the standard deviation (Bessel-corrected) of the
      candidates' IoUs with it;
    * a candidate is positive if its IoU reaches the threshold and its centre lies inside
      the GT box by more than ``eps`` pixels on every side.

    An anchor positive for several GTs takes the one of highest IoU. Everything else is
    background (``-1``); nothing is ignored. Batched over images and GTs: one
    ``(B, G, N)`` IoU and distance matrix, and a loop over the FPN levels only.
    """

    def __init__(self, topk: int = 9, eps: float = 0.01) -> None:
        if topk < 1:
            raise ValueError(f"assigners.py: ATSS needs topk >= 1, got {topk}.")
        self.topk = int(topk)
        self.eps = float(eps)

    def __call__(
        self, anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor, level_ids: Tensor
    ) -> Tensor:
        """Match ``anchors`` ``(N, 4)`` (levels concatenated, ``level_ids`` ``(N,)``
        non-decreasing) to ``gt_boxes`` ``(B, G, 4)`` (mask ``gt_valid``).

        Returns ``matched_idxs`` ``(B, N)`` long, ``-1`` for background. The per-level
        anchor counts are read to the host once (they size the per-level ``topk``).
        """
        batch, num_gt = gt_valid.shape
        num = anchors.shape[0]
        if num_gt == 0:
            return anchors.new_full((batch, num), BACKGROUND, dtype=torch.long)
        gt_boxes = gt_boxes.to(anchors.dtype)
        iou = box_iou(gt_boxes.reshape(-1, 4), anchors).reshape(batch, num_gt, num)  # (B, G, N)
        anchor_ctr = (anchors[:, :2] + anchors[:, 2:]) / 2  # (N, 2)
        gt_ctr = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, G, 2)
        dist = (gt_ctr[:, :, None, :] - anchor_ctr).square().sum(-1).sqrt()  # (B, G, N)

        candidate = torch.zeros_like(iou, dtype=torch.bool)  # (B, G, N)
        start = 0
        for size in torch.bincount(level_ids).tolist():  # a loop over FPN levels
            if size > 0:
                nearest = (
                    dist[..., start : start + size]
                    .topk(min(self.topk, size), dim=-1, largest=False)
                    .indices
                )  # (B, G, k) within the level
                candidate.scatter_(-1, nearest + start, True)
            start += size

        count = candidate.sum(-1, keepdim=True)  # (B, G, 1)
        cand_iou = torch.where(candidate, iou, 0.0)  # (B, G, N)
        mean = cand_iou.sum(-1, keepdim=True) / count  # (B, G, 1)
        var = torch.where(candidate, (iou - mean).square(), 0.0).sum(-1, keepdim=True)
        std = (var / (count - 1).clamp(min=1)).sqrt()  # (B, G, 1)

        x1, y1, x2, y2 = (c[..., None] for c in gt_boxes.unbind(dim=-1))  # (B, G, 1) each
        px, py = anchor_ctr[:, 0], anchor_ctr[:, 1]  # (N,) each
        inside = torch.stack([px - x1, py - y1, x2 - px, y2 - py], dim=-1).min(-1).values > self.eps

        positive = candidate & (iou >= mean + std) & inside & gt_valid[..., None]  # (B, G, N)
        best_iou, best_gt = torch.where(positive, iou, -1.0).max(dim=1)  # (B, N) each
        return torch.where(best_iou >= 0, best_gt, BACKGROUND)

    def __repr__(self) -> str:
        return f"ATSSAssigner(topk={self.topk}, eps={self.eps})"
