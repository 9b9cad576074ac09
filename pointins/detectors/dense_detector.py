"""A dense one-stage detector assembled from parts (detectron2's ``DenseDetector`` idea).

RetinaNet, FCOS and ATSS are the same :class:`DenseDetector` with different parts, each
a ``_target_`` in ``conf/detector/<name>.yaml``:

* ``head``: :class:`~pointins.detectors.heads.DenseHead`, logits, box outputs and
  (optionally) centre-ness per anchor, and the PoI features PointINS reads;
* ``anchor_generator``: :mod:`~pointins.detectors.anchors`, anchors per location;
* ``box_coder``: :mod:`~pointins.detectors.box_coders`, box outputs <-> boxes;
* ``assigner``: :mod:`~pointins.detectors.assigners`, which GT each anchor learns from,
  and which anchors qualify for mask sampling;
* ``loss``: :mod:`~pointins.detectors.losses`;
* ``postprocess``: :class:`~pointins.detectors.postprocess.PostProcess`.

The detector depends on none of PointINS's mask module: its training pass returns a
:class:`~pointins.structures.DetectorState` that the mask sampler reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pointins.detectors.assigners import gather_assigned, pad_targets
from pointins.structures import DenseOutputs, Detections, DetectorState, cat_levels

FeatureSizes = list[tuple[int, int]]


class DenseDetector(nn.Module):
    """Head + anchors + box coder + assigner + loss + post-processing.

    Args:
        head: an ``nn.Module`` mapping FPN levels to :class:`DenseOutputs`.
        anchor_generator: anchors per level for given feature sizes; its ``strides`` are
            the FPN's, its ``num_anchors`` the head's ``A``.
        box_coder: ``encode(anchors, boxes)`` / ``decode(anchors, outputs)``.
        assigner: ``assigner(anchors, gt_boxes, gt_valid, level_ids) -> (B, N)`` matches,
            and ``mask_anchor_condition(...)``.
        loss: ``loss(outputs, anchors, assignment, box_coder) -> dict`` of loss terms.
        postprocess: ``postprocess(outputs, anchors, feature_sizes, A, box_coder,
            image_sizes) -> list[Detections]``.
    """

    def __init__(
        self,
        head: nn.Module,
        anchor_generator,
        box_coder,
        assigner,
        loss,
        postprocess,
    ) -> None:
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.assigner = assigner
        self.loss = loss
        self.postprocess = postprocess
        if head.num_anchors != anchor_generator.num_anchors:
            raise ValueError(
                f"dense_detector.py: the head predicts {head.num_anchors} anchors per location "
                f"but the anchor generator makes {anchor_generator.num_anchors}; build the head "
                "with num_anchors=anchor_generator.num_anchors (build_model does)"
            )

    @property
    def strides(self) -> list[int]:
        return [int(s) for s in self.anchor_generator.strides]

    @property
    def num_anchors(self) -> int:
        return self.anchor_generator.num_anchors

    @property
    def anchor_shape(self) -> bool:
        """Whether anchors carry a shape (RetinaNet, ATSS) or are bare locations (FCOS);
        the mask module's Iz uses the anchor's aspect ratio and size only in the first case."""
        return self.anchor_generator.anchor_shape

    def forward(self, features: list[Tensor]) -> DenseOutputs:
        return self.head(features)

    def forward_train(
        self, features: list[Tensor], targets: Sequence[dict[str, Tensor]]
    ) -> tuple[dict[str, Tensor], DetectorState]:
        """Loss terms of a batch, and the state the mask sampler reads.

        Args:
            features: FPN levels ``[(B, F, H_l, W_l)]``.
            targets: per image ``boxes`` ``(G_i, 4)`` xyxy and ``labels`` ``(G_i,)``.
        """
        outputs = self(features)
        device = features[0].device
        feature_sizes = [tuple(p.shape[-2:]) for p in outputs.poi_features]
        anchors = torch.cat(self.anchor_generator(feature_sizes, device))  # (N, 4)
        level_ids = self.anchor_generator.level_ids(feature_sizes, device)  # (N,)
        gt_boxes, gt_labels, gt_valid = pad_targets(targets)  # (B, G, 4), (B, G), (B, G)
        matched_idxs = self.assigner(anchors, gt_boxes, gt_valid, level_ids)  # (B, N)
        assignment = gather_assigned(matched_idxs, gt_boxes, gt_labels)
        losses = self.loss(outputs, anchors, assignment, self.box_coder)
        with torch.no_grad():
            box_regression = cat_levels(outputs.box_regression)  # (B, N, 4)
            pred_boxes = self.box_coder.decode(
                anchors[None].expand_as(box_regression), box_regression
            )
        state = DetectorState(
            poi_features=outputs.poi_features,
            feature_sizes=feature_sizes,
            strides=self.strides,
            num_anchors=self.num_anchors,
            anchors=anchors,
            level_ids=level_ids,
            matched_idxs=matched_idxs,
            gt_boxes=gt_boxes,
            gt_valid=gt_valid,
            pred_boxes=pred_boxes,  # (B, N, 4)
        )
        return losses, state

    def mask_anchor_condition(self, state: DetectorState, anchor_iou: float) -> Tensor:
        """``(B, N)`` long: the GT each anchor qualifies for in mask sampling, or ``-1``
        (the assigner's rule; ``anchor_iou`` is ``t_a`` where the rule uses one)."""
        return self.assigner.mask_anchor_condition(
            state.anchors, state.matched_idxs, state.gt_boxes, state.gt_valid, anchor_iou
        )

    def inference(
        self, outputs: DenseOutputs, image_sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        """Per-image detections (input-image coordinates) from the head's outputs."""
        feature_sizes = [tuple(p.shape[-2:]) for p in outputs.poi_features]
        device = outputs.poi_features[0].device
        anchors = self.anchor_generator(feature_sizes, device)  # per level (H_l*W_l*A, 4)
        return self.postprocess(
            outputs, anchors, feature_sizes, self.num_anchors, self.box_coder, image_sizes
        )

    def extra_repr(self) -> str:
        return (
            f"anchor_generator={self.anchor_generator!r}, box_coder={self.box_coder!r},\n"
            f"assigner={self.assigner!r}, loss={self.loss!r},\npostprocess={self.postprocess!r}"
        )
