"""The skeleton shared by RetinaNet and FCOS (detectron2's ``DenseDetector`` idea).

A dense detector is a head plus four small strategies: an anchor generator, a box
coder, an assigner and a loss. RetinaNet and FCOS below differ only in those, and in
how a location qualifies for mask sampling (``mask_anchor_condition``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pointins.detectors.anchors import AnchorGenerator, PointGenerator
from pointins.detectors.assigners import (
    FCOS_SIZE_RANGES,
    FCOSAssigner,
    IoUAssigner,
    gather_assigned,
)
from pointins.detectors.box_coders import DeltaBoxCoder, LTRBBoxCoder
from pointins.detectors.heads import FCOSHead, RetinaNetHead
from pointins.detectors.losses import fcos_losses, retinanet_losses
from pointins.detectors.postprocess import postprocess_detections
from pointins.mask.sampling import anchor_condition_from_matches, anchor_condition_iou
from pointins.structures import DenseOutputs, Detections

FeatureSizes = list[tuple[int, int]]


def cat_levels(per_level: Sequence[Tensor]) -> Tensor:
    """Concatenate per-level ``(B, HWA_l, ...)`` tensors along the anchor axis."""
    return torch.cat(list(per_level), dim=1)


class DenseDetector(nn.Module):
    """Head + anchors + box coder + assigner; training targets, losses and inference.

    Subclasses set ``head``, ``anchor_generator``, ``box_coder`` and implement
    :meth:`assign`, :meth:`compute_losses` and :meth:`mask_anchor_condition`.
    """

    #: whether anchors carry a shape (RetinaNet) or are bare locations (FCOS); the mask
    #: module's Iz uses the anchor's aspect ratio and size only in the first case.
    anchor_shape: bool
    head: nn.Module
    anchor_generator: AnchorGenerator | PointGenerator
    box_coder: DeltaBoxCoder | LTRBBoxCoder

    def __init__(
        self,
        strides: Sequence[int],
        score_thresh: float,
        topk_candidates: int,
        nms_thresh: float,
        detections_per_img: int,
    ) -> None:
        super().__init__()
        self.strides = [int(s) for s in strides]
        self.score_thresh = score_thresh
        self.topk_candidates = topk_candidates
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    @property
    def num_anchors(self) -> int:
        return self.anchor_generator.num_anchors

    def forward(self, features: list[Tensor]) -> DenseOutputs:
        return self.head(features)

    def anchors(self, feature_sizes: FeatureSizes, device: torch.device) -> list[Tensor]:
        """Per level ``(H_l*W_l*A, 4)`` anchors (cached by the generator)."""
        return self.anchor_generator(feature_sizes, device)

    def level_ids(self, feature_sizes: FeatureSizes, device: torch.device) -> Tensor:
        return self.anchor_generator.level_ids(feature_sizes, device)

    def decode(self, box_regression: Tensor, anchors: Tensor) -> Tensor:
        """``(B, N, 4)`` regression, ``(N, 4)`` anchors -> ``(B, N, 4)`` boxes."""
        return self.box_coder.decode(anchors[None].expand_as(box_regression), box_regression)

    def assign(
        self, anchors: Tensor, level_ids: Tensor, gt_boxes: Tensor, gt_valid: Tensor
    ) -> Tensor:
        raise NotImplementedError

    def compute_losses(
        self,
        outputs: DenseOutputs,
        anchors: Tensor,
        matched_idxs: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def mask_anchor_condition(
        self,
        anchors: Tensor,
        matched_idxs: Tensor,
        gt_boxes: Tensor,
        gt_valid: Tensor,
        anchor_iou: float,
    ) -> Tensor:
        """``(B, N)`` long: the GT a location's anchor qualifies for mask sampling, or -1."""
        raise NotImplementedError

    def inference(
        self,
        outputs: DenseOutputs,
        anchors: list[Tensor],
        feature_sizes: FeatureSizes,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Detections]:
        return postprocess_detections(
            outputs.cls_logits,
            outputs.box_regression,
            outputs.centerness,
            anchors,
            feature_sizes,
            self.num_anchors,
            self.box_coder,
            image_sizes,
            score_thresh=self.score_thresh,
            topk_candidates=self.topk_candidates,
            nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img,
        )


class RetinaNet(DenseDetector):
    """RetinaNet (Lin et al.): 9 anchors per location, IoU matching, focal + smooth-L1."""

    anchor_shape = True
    p6_from = "c5"  # the FPN's P6 input in the original RetinaNet

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        num_convs: int = 4,
        conv_dim: int = 256,
        prior_prob: float = 0.01,
        group_norm: bool = False,
        checkpoint_towers: bool = False,
        octave_base_scale: float = 4,
        scales_per_octave: int = 3,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.4,
        allow_low_quality_matches: bool = True,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        smooth_l1_beta: float = 0.1,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__(strides, score_thresh, topk_candidates, nms_thresh, detections_per_img)
        self.anchor_generator = AnchorGenerator(
            self.strides, octave_base_scale, scales_per_octave, aspect_ratios
        )
        self.head = RetinaNetHead(
            in_channels,
            num_classes,
            self.anchor_generator.num_anchors,
            num_convs,
            conv_dim,
            prior_prob,
            group_norm,
            checkpoint_towers,
        )
        self.box_coder = DeltaBoxCoder(scale_clamp=math.log(1000.0 / 16))
        self.assigner = IoUAssigner(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.smooth_l1_beta = smooth_l1_beta

    def assign(self, anchors, level_ids, gt_boxes, gt_valid):
        return self.assigner(anchors, gt_boxes, gt_valid)

    def compute_losses(self, outputs, anchors, matched_idxs, gt_boxes, gt_labels):
        return retinanet_losses(
            cat_levels(outputs.cls_logits),
            cat_levels(outputs.box_regression),
            anchors,
            gather_assigned(matched_idxs, gt_boxes, gt_labels),
            self.box_coder,
            self.focal_alpha,
            self.focal_gamma,
            self.smooth_l1_beta,
        )

    def mask_anchor_condition(self, anchors, matched_idxs, gt_boxes, gt_valid, anchor_iou):
        return anchor_condition_iou(anchors, gt_boxes, gt_valid, anchor_iou)


class FCOS(DenseDetector):
    """FCOS (Tian et al.): one point per location, centre sampling, focal + GIoU +
    centerness, scores sqrt(cls · centerness)."""

    anchor_shape = False
    p6_from = "p5"  # the FPN's P6 input in FCOS

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        num_convs: int = 4,
        conv_dim: int = 256,
        prior_prob: float = 0.01,
        group_norm: bool = True,
        checkpoint_towers: bool = False,
        center_sampling_radius: float = 1.5,
        size_ranges: Sequence[Sequence[float]] = FCOS_SIZE_RANGES,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__(strides, score_thresh, topk_candidates, nms_thresh, detections_per_img)
        if len(size_ranges) != len(self.strides):
            raise ValueError(
                f"detector.size_ranges has {len(size_ranges)} ranges for {len(self.strides)} "
                "FPN levels; give one [lo, hi] per level"
            )
        self.anchor_generator = PointGenerator(self.strides)
        self.head = FCOSHead(
            in_channels,
            num_classes,
            len(self.strides),
            num_convs,
            conv_dim,
            prior_prob,
            group_norm,
            checkpoint_towers,
        )
        self.box_coder = LTRBBoxCoder()
        self.assigner = FCOSAssigner(center_sampling_radius, size_ranges)
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def assign(self, anchors, level_ids, gt_boxes, gt_valid):
        return self.assigner(anchors, level_ids, gt_boxes, gt_valid)

    def compute_losses(self, outputs, anchors, matched_idxs, gt_boxes, gt_labels):
        return fcos_losses(
            cat_levels(outputs.cls_logits),
            cat_levels(outputs.box_regression),
            torch.cat(outputs.centerness, dim=1),
            anchors,
            gather_assigned(matched_idxs, gt_boxes, gt_labels),
            self.box_coder,
            self.focal_alpha,
            self.focal_gamma,
        )

    def mask_anchor_condition(self, anchors, matched_idxs, gt_boxes, gt_valid, anchor_iou):
        # FCOS has no anchor box: the "anchor condition" is FCOS positivity (SPEC §4).
        return anchor_condition_from_matches(matched_idxs)
