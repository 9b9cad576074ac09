"""Typed containers passed between the stages of PointINS.

Conventions used everywhere in the package:

* boxes are ``(x1, y1, x2, y2)`` in pixels of the (resized, padded) network input
  unless a docstring says "original image";
* per-image lists live at the API edge (datamodule, evaluator, user-facing
  predictions); batched tensors live inside the model;
* FPN levels are indexed from 0 (P3) upwards, a level's locations are flattened
  row-major (``index = y * W + x``) and, for anchor-based detectors, anchors are
  the fastest axis: ``flat_index = (y * W + x) * A + a``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


class _TensorFields:
    """``to``/``index`` helpers for dataclasses whose fields are tensors (or None)."""

    def to(self, device: torch.device | str):
        return replace(
            self,
            **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            },
        )

    def __getitem__(self, item):
        """Select rows of every per-instance tensor field (all share dim 0)."""
        return replace(
            self,
            **{
                f.name: getattr(self, f.name)[item]
                for f in fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            },
        )

    def __len__(self) -> int:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                return value.shape[0]
        return 0


def cat_levels(per_level: list[Tensor]) -> Tensor:
    """Concatenate per-level ``(B, HWA_l, ...)`` tensors along the anchor axis."""
    return torch.cat(list(per_level), dim=1)


@dataclass
class DenseOutputs:
    """What a dense head predicts for a batch, one list entry per FPN level.

    ``A`` is the number of anchors per location (RetinaNet 9, FCOS 1), ``C`` the
    number of classes, ``HWA_l = H_l * W_l * A``.
    """

    cls_logits: list[Tensor]  # per level (B, HWA_l, C)
    box_regression: list[Tensor]  # per level (B, HWA_l, 4)
    centerness: list[Tensor] | None  # per level (B, HWA_l) logits; heads with centre-ness only
    poi_features: list[Tensor]  # per level (B, F, H_l, W_l): last map of the regression tower


@dataclass
class DetectorState:
    """What a dense detector's training pass knows that the mask sampler needs.

    ``N`` anchors of all levels concatenated, ``G`` ground-truth boxes per image (padded).
    """

    poi_features: list[Tensor]  # per level (B, F, H_l, W_l): last map of the regression tower
    feature_sizes: list[tuple[int, int]]  # per level (H_l, W_l)
    strides: list[int]  # per level, pixels
    num_anchors: int  # A, anchors per location
    anchors: Tensor  # (N, 4)
    level_ids: Tensor  # (N,) long
    matched_idxs: Tensor  # (B, N) long, the assigner's output
    gt_boxes: Tensor  # (B, G, 4) padded ground truth
    gt_valid: Tensor  # (B, G) bool, False where padded
    pred_boxes: Tensor  # (B, N, 4) decoded regressed boxes, detached


@dataclass
class Assignment(_TensorFields):
    """Ground truth assigned to every anchor of a batch (all levels concatenated).

    ``matched_idxs`` follows torchvision's matcher contract: ``>= 0`` index of the
    matched ground-truth box *within its image*, ``-1`` background, ``-2`` ignored.
    """

    matched_idxs: Tensor  # (B, sum_l HWA_l) long
    gt_boxes: Tensor  # (B, sum_l HWA_l, 4) box of the matched GT (undefined where < 0)
    gt_labels: Tensor  # (B, sum_l HWA_l) long label of the matched GT (undefined where < 0)


@dataclass
class InstanceQueries(_TensorFields):
    """The seam between detector and mask module: one row per instance to segment.

    Training builds them from sampled (point, anchor, target box) candidates,
    inference from the detections kept after NMS. The mask module never needs
    to know which detector made them.
    """

    batch_idx: Tensor  # (N,) long, image index in the batch
    level: Tensor  # (N,) long, FPN level index (0 = P3)
    yx: Tensor  # (N, 2) long, location (row, col) on that level's grid
    stride: Tensor  # (N,) float, stride of that level in pixels
    anchors: Tensor  # (N, 4) anchor box; FCOS: the stride x stride cell centred on the location
    target_boxes: Tensor  # (N, 4) box the mask is predicted in (anchor, GT or regressed)
    gt_idx: Tensor | None = None  # (N,) long, GT index within its image (training only)


@dataclass
class Detections(_TensorFields):
    """Detections of one image after NMS, in network-input coordinates.

    Besides the usual outputs each detection remembers where it came from
    (level, location, anchor) so the mask module can compute its mask.
    """

    boxes: Tensor  # (n, 4)
    scores: Tensor  # (n,)
    labels: Tensor  # (n,) long, contiguous training labels 0..C-1
    level: Tensor  # (n,) long
    yx: Tensor  # (n, 2) long
    anchor_idx: Tensor  # (n,) long, 0..A-1
    anchors: Tensor  # (n, 4) anchor box (FCOS: the stride x stride cell of the location)
    masks: Tensor | None = None  # (n, S, S) box-relative mask probabilities, once computed


@dataclass
class Batch:
    """A batch of images and their targets.

    Lightning moves it to the device field by field (``apply_to_collection`` recurses
    into dataclasses); ``pin_memory`` lets the DataLoader pin it.
    """

    images: Tensor  # (B, 3, Hp, Wp) float, normalised, zero-padded bottom/right
    image_sizes: list[tuple[int, int]]  # (h, w) after transforms, before padding
    orig_sizes: list[tuple[int, int]]  # (H0, W0) of the image files
    image_ids: list[int]  # dataset (COCO) image ids
    targets: list[dict[str, Tensor]]  # "boxes" (n, 4) xyxy, "labels" (n,), "masks" (n, h, w)
    instances_dropped: int = 0  # instances the augmentation removed (box under 1 px)

    def __len__(self) -> int:
        return len(self.image_ids)

    def pin_memory(self) -> Batch:
        """A copy whose tensors live in pinned host memory."""
        return Batch(
            images=self.images.pin_memory(),
            image_sizes=self.image_sizes,
            orig_sizes=self.orig_sizes,
            image_ids=self.image_ids,
            targets=[{k: v.pin_memory() for k, v in t.items()} for t in self.targets],
            instances_dropped=self.instances_dropped,
        )


def padded_side(side: int, size_divisibility: int, buckets: Sequence[int] = ()) -> int:
    """``side`` rounded up to a multiple of ``size_divisibility``, then up to the smallest
    of ``buckets`` that holds it (unchanged when none does)."""
    side = math.ceil(side / size_divisibility) * size_divisibility
    return min((b for b in buckets if b >= side), default=side)


def pad_images(
    images: Sequence[Tensor], size_divisibility: int, buckets: Sequence[int] = ()
) -> Tensor:
    """Stack (3, h, w) images into (B, 3, Hp, Wp), zero-padded bottom/right to a multiple of
    ``size_divisibility`` (and with ``buckets``, to the smallest bucket side that holds it)."""
    height = padded_side(max(img.shape[-2] for img in images), size_divisibility, buckets)
    width = padded_side(max(img.shape[-1] for img in images), size_divisibility, buckets)
    first = images[0]
    padded = torch.zeros(
        (len(images), first.shape[0], height, width), dtype=first.dtype, device=first.device
    )
    for img, slot in zip(images, padded, strict=True):
        slot[:, : img.shape[-2], : img.shape[-1]].copy_(img)
    return padded
