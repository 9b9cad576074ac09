"""Dense-detector losses (RetinaNet; FCOS and ATSS), batched over images and anchors.

:class:`RetinaNetLoss` and :class:`CenternessLoss` are the ``loss`` part of a
:class:`~pointins.detectors.DenseDetector`; the functions below them take the head
outputs with all levels concatenated along dim 1 and an
:class:`~pointins.structures.Assignment` from ``assigners.py``. Every loss is a
sum over anchors divided by the number of positives in the batch, averaged over ranks
when ``torch.distributed`` is initialised (the official FCOS and mmdetection convention,
and torchvision's FCOS; torchvision's RetinaNet divides per image, detectron2 by a moving
average of the count). A batch
with no positive gives finite losses that keep the graph (all terms are sums,
which are 0 with a gradient over empty selections), so DDP never hangs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from pointins.detectors.box_coders import BoxCoder
from pointins.detectors.focal_loss import sigmoid_focal_loss
from pointins.structures import Assignment, DenseOutputs, cat_levels


def num_positives_across_ranks(num_pos: Tensor, minimum: float = 1.0) -> Tensor:
    """Mean of a positive count (or of a sum of weights) over ranks, as a float tensor
    clamped at ``minimum`` so it can divide."""
    num_pos = num_pos.detach().float().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_pos, op=dist.ReduceOp.SUM)
        num_pos = num_pos / dist.get_world_size()
    return num_pos.clamp(min=minimum)


def classification_loss(
    cls_logits: Tensor, assignment: Assignment, alpha: float, gamma: float
) -> Tensor:
    """Sigmoid focal loss summed over non-ignored anchors, one-hot class targets.

    ``cls_logits`` ``(B, N, C)``; positives (``matched_idxs >= 0``) have target 1 at
    their GT label, background (``-1``) all zeros, ignored (``-2``) are left out.
    """
    matched = assignment.matched_idxs  # (B, N): >= 0 positive, -1 background, -2 ignored
    labels = torch.where(matched >= 0, assignment.gt_labels, matched)  # (B, N)
    return sigmoid_focal_loss(cls_logits, labels, alpha=alpha, gamma=gamma)


def retinanet_losses(
    cls_logits: Tensor,
    box_regression: Tensor,
    anchors: Tensor,
    assignment: Assignment,
    box_coder: BoxCoder,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    smooth_l1_beta: float = 0.1,
) -> dict[str, Tensor]:
    """RetinaNet: focal classification loss + smooth-L1 on encoded deltas of positives.

    Args:
        cls_logits: ``(B, N, C)``; box_regression: ``(B, N, 4)`` deltas; anchors: ``(N, 4)``.
        assignment: per-anchor targets, ``matched_idxs`` ``(B, N)``.
        box_coder: encodes GT boxes to deltas (``DeltaBoxCoder``).

    Returns:
        ``{"loss_cls", "loss_box_reg"}``, each summed and divided by the positives.
    """
    positive = assignment.matched_idxs >= 0  # (B, N)
    normaliser = num_positives_across_ranks(positive.sum())
    loss_cls = classification_loss(cls_logits, assignment, focal_alpha, focal_gamma)

    pos_anchors = anchors[None].expand_as(box_regression)[positive]  # (P, 4)
    with torch.no_grad():
        target_deltas = box_coder.encode(pos_anchors, assignment.gt_boxes[positive])  # (P, 4)
    loss_box = F.smooth_l1_loss(
        box_regression[positive],
        target_deltas.to(box_regression.dtype),
        beta=smooth_l1_beta,
        reduction="sum",
    )
    return {"loss_cls": loss_cls / normaliser, "loss_box_reg": loss_box / normaliser}


def centre_distances(anchors: Tensor, boxes: Tensor) -> Tensor:
    """``(..., 4)`` pixel distances ``(l, t, r, b)`` from the anchor centres to the box sides."""
    cx = (anchors[..., 0] + anchors[..., 2]) / 2
    cy = (anchors[..., 1] + anchors[..., 3]) / 2
    return torch.stack(
        [cx - boxes[..., 0], cy - boxes[..., 1], boxes[..., 2] - cx, boxes[..., 3] - cy], dim=-1
    )  # (..., 4)


def centerness_targets(ltrb: Tensor) -> Tensor:
    """Centre-ness of ``(..., 4)`` ltrb: ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``."""
    left_right = ltrb[..., [0, 2]]  # (..., 2)
    top_bottom = ltrb[..., [1, 3]]  # (..., 2)
    ratio_lr = left_right.min(dim=-1).values / left_right.max(dim=-1).values
    ratio_tb = top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values
    return torch.sqrt(ratio_lr * ratio_tb)


def fcos_losses(
    cls_logits: Tensor,
    box_regression: Tensor,
    centerness: Tensor,
    anchors: Tensor,
    assignment: Assignment,
    box_coder: BoxCoder,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    box_weight: float = 1.0,
) -> dict[str, Tensor]:
    """FCOS: focal classification, GIoU on decoded boxes and centre-ness BCE of positives.

    Args:
        cls_logits: ``(B, N, C)``.
        box_regression: ``(B, N, 4)`` box-coder outputs (FCOS: stride-normalised
            ``(l, t, r, b)``; ATSS: deltas).
        centerness: ``(B, N)`` logits.
        anchors: ``(N, 4)`` anchors (FCOS: the cell boxes of the locations).
        assignment: per-anchor targets, ``matched_idxs`` ``(B, N)``.
        box_coder: decodes ``box_regression`` against the anchors.
        box_weight: factor of the GIoU term (FCOS 1, ATSS 2).

    Returns:
        ``{"loss_cls", "loss_box_reg", "loss_centerness"}``. Classification and
        centre-ness are divided by the positives; the GIoU loss is weighted by each
        positive's centre-ness target and divided by their sum, as FCOS and AdelaiDet do,
        so boxes are learned most from the locations that will score highest.
    """
    positive = assignment.matched_idxs >= 0  # (B, N)
    normaliser = num_positives_across_ranks(positive.sum())
    loss_cls = classification_loss(cls_logits, assignment, focal_alpha, focal_gamma)

    pos_anchors = anchors[None].expand_as(box_regression)[positive]  # (P, 4)
    pos_gt = assignment.gt_boxes[positive].to(box_regression.dtype)  # (P, 4)
    with torch.no_grad():
        ctr_targets = centerness_targets(centre_distances(pos_anchors, pos_gt))  # (P,)
    pred_boxes = box_coder.decode(pos_anchors, box_regression[positive])  # (P, 4)
    giou = generalized_box_iou_loss(pred_boxes, pos_gt, reduction="none")  # (P,)
    loss_box = (giou * ctr_targets.to(giou.dtype)).sum()
    box_normaliser = num_positives_across_ranks(ctr_targets.sum(), minimum=1e-6)

    loss_ctr = F.binary_cross_entropy_with_logits(
        centerness[positive], ctr_targets.to(centerness.dtype), reduction="sum"
    )
    return {
        "loss_cls": loss_cls / normaliser,
        "loss_box_reg": box_weight * loss_box / box_normaliser,
        "loss_centerness": loss_ctr / normaliser,
    }


class RetinaNetLoss:
    """RetinaNet's loss part: focal classification + smooth-L1 on deltas."""

    def __init__(
        self, focal_alpha: float = 0.25, focal_gamma: float = 2.0, smooth_l1_beta: float = 0.1
    ) -> None:
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.smooth_l1_beta = float(smooth_l1_beta)

    def __call__(
        self, outputs: DenseOutputs, anchors: Tensor, assignment: Assignment, box_coder: BoxCoder
    ) -> dict[str, Tensor]:
        return retinanet_losses(
            cat_levels(outputs.cls_logits),  # (B, N, C)
            cat_levels(outputs.box_regression),  # (B, N, 4)
            anchors,
            assignment,
            box_coder,
            self.focal_alpha,
            self.focal_gamma,
            self.smooth_l1_beta,
        )

    def __repr__(self) -> str:
        return (
            f"RetinaNetLoss(focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}, "
            f"smooth_l1_beta={self.smooth_l1_beta})"
        )


class CenternessLoss:
    """FCOS's and ATSS's loss part: focal classification, GIoU weighted by the centre-ness
    targets, and centre-ness BCE (:func:`fcos_losses`). Needs a head with centre-ness."""

    def __init__(
        self, focal_alpha: float = 0.25, focal_gamma: float = 2.0, box_weight: float = 1.0
    ) -> None:
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.box_weight = float(box_weight)

    def __call__(
        self, outputs: DenseOutputs, anchors: Tensor, assignment: Assignment, box_coder: BoxCoder
    ) -> dict[str, Tensor]:
        if outputs.centerness is None:
            raise ValueError(
                "losses.py: CenternessLoss needs centre-ness predictions; set "
                "model.detector.head.centerness=true"
            )
        return fcos_losses(
            cat_levels(outputs.cls_logits),  # (B, N, C)
            cat_levels(outputs.box_regression),  # (B, N, 4)
            cat_levels(outputs.centerness),  # (B, N)
            anchors,
            assignment,
            box_coder,
            self.focal_alpha,
            self.focal_gamma,
            self.box_weight,
        )

    def __repr__(self) -> str:
        return (
            f"CenternessLoss(focal_alpha={self.focal_alpha}, focal_gamma={self.focal_gamma}, "
            f"box_weight={self.box_weight})"
        )
