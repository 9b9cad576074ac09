"""Joint image / box / mask transforms built on ``torchvision.transforms.v2``.

A sample is ``(image, target)`` with ``image`` a ``tv_tensors.Image`` (3, H, W) uint8 and
``target`` a dict holding ``boxes`` (``tv_tensors.BoundingBoxes``, XYXY), ``masks``
(``tv_tensors.Mask`` (n, H, W) uint8) and ``labels`` ((n,) int64). Every geometric op
transforms the three together, so boxes and masks stay aligned.

Train: ``[RandomRelativeCrop → BoxesFromMasks] → ResizeShortestEdge(scales) →
RandomHorizontalFlip → SanitizeBoundingBoxes → ToDtype(float32) → Normalize``.
Test:  ``ResizeShortestEdge(test_scale) → ToDtype → Normalize`` (targets optional: the same
pipeline serves unlabelled images).

The optional crop runs *before* the resize (as in detectron2), so the resized output
still has its shorter side from ``scales``; after a crop the boxes are recomputed from
the cropped masks (detectron2's ``recompute_boxes``), because an annotation box clipped
to the crop window can be much larger than the part of the object left visible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# the test pipeline's sizes and normalisation are those a checkpoint stores (Preprocess)
from pointins.preprocess import IMAGENET_MEAN, IMAGENET_STD, resized_shape


def masks_to_tight_boxes(masks: Tensor) -> Tensor:
    """Tight XYXY boxes of (n, H, W) masks, on pixel edges (a mask on column 3 spans x 3..4).

    Empty masks get the degenerate box (0, 0, 0, 0). Unlike ``torchvision.ops.masks_to_boxes``
    (inclusive pixel indices, a loop over masks) this matches COCO's box convention.
    """
    height, width = masks.shape[-2:]
    rows = masks.any(dim=2)  # (n, H)
    cols = masks.any(dim=1)  # (n, W)
    y1 = rows.int().argmax(dim=1)
    y2 = height - rows.flip(1).int().argmax(dim=1)
    x1 = cols.int().argmax(dim=1)
    x2 = width - cols.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()  # (n, 4)
    return boxes * rows.any(dim=1, keepdim=True)


class ResizeShortestEdge(v2.Transform):
    """Resize so the shorter side is a random choice of ``short_sizes``, longer side ≤ ``max_size``.

    Images use antialiased bilinear interpolation, masks ``nearest-exact`` (pixel-centre
    aligned, unlike torch's ``nearest`` that shifts masks by half a source pixel).
    """

    def __init__(self, short_sizes: Sequence[int], max_size: int) -> None:
        super().__init__()
        self.short_sizes = [int(s) for s in short_sizes]
        self.max_size = int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        short = self.short_sizes[int(torch.randint(len(self.short_sizes), ()))]
        return {"size": list(resized_shape(height, width, short, self.max_size))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            mode = v2.InterpolationMode.NEAREST_EXACT
        else:
            mode = v2.InterpolationMode.BILINEAR
        return self._call_kernel(F.resize, inpt, params["size"], interpolation=mode, antialias=True)


class RandomRelativeCrop(v2.Transform):
    """detectron2's ``relative_range`` crop: a (U(fh, 1)·H, U(fw, 1)·W) window at a random place."""

    def __init__(self, min_fraction: Sequence[float]) -> None:
        super().__init__()
        fh, fw = (float(f) for f in min_fraction)
        if not (0 < fh <= 1 and 0 < fw <= 1):
            raise ValueError(f"crop size fractions must lie in (0, 1], got {list(min_fraction)}")
        self.min_fraction = (fh, fw)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        fractions = torch.tensor(self.min_fraction)
        fractions = fractions + torch.rand(2) * (1 - fractions)
        crop_h = int(height * float(fractions[0]) + 0.5)
        crop_w = int(width * float(fractions[1]) + 0.5)
        top = int(torch.randint(height - crop_h + 1, ()))
        left = int(torch.randint(width - crop_w + 1, ()))
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class BoxesFromMasks(v2.Transform):
    """Replace the boxes by the tight boxes of their instance masks (one Mask per sample)."""

    _transformed_types = (tv_tensors.BoundingBoxes, tv_tensors.Mask)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        masks = [x for x in flat_inputs if isinstance(x, tv_tensors.Mask)]
        if len(masks) != 1:
            raise TypeError(f"BoxesFromMasks needs exactly one tv_tensors.Mask, got {len(masks)}")
        return {"boxes": masks_to_tight_boxes(masks[0].as_subclass(Tensor))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.BoundingBoxes):
            return inpt
        return F.convert_bounding_box_format(
            tv_tensors.wrap(params["boxes"].to(inpt.dtype), like=inpt, format="XYXY"),
            new_format=inpt.format,
        )


def build_crop(crop: Mapping[str, Any]) -> list[v2.Transform]:
    """The crop ops for ``data.crop``, e.g. ``{type: relative_range, size: [0.9, 0.9]}``."""
    if crop.get("type") != "relative_range":
        raise ValueError(
            f"data.crop.type={crop.get('type')!r} is not supported; use 'relative_range' "
            "(crop size fractions in data.crop.size) or set data.crop=null"
        )
    return [RandomRelativeCrop(crop["size"]), BoxesFromMasks()]


def _to_normalized_float(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    """uint8 image → float32 in [0, 1] → normalised; boxes and masks untouched."""
    return [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std]),
    ]


def build_train_transforms(
    scales: Sequence[int],
    max_size: int,
    hflip_prob: float = 0.5,
    crop: Mapping[str, Any] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Training pipeline: [crop] → multi-scale resize → flip → drop degenerate boxes → normalise."""
    ops: list[v2.Transform] = build_crop(crop) if crop else []
    ops += [
        ResizeShortestEdge(scales, max_size),
        v2.RandomHorizontalFlip(p=hflip_prob),
        v2.SanitizeBoundingBoxes(),
    ]
    return v2.Compose(ops + _to_normalized_float(mean, std))


def build_test_transforms(
    scale: int,
    max_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Evaluation pipeline: resize to shorter side ``scale`` (longer ≤ ``max_size``) → normalise."""
    ops: list[v2.Transform] = [ResizeShortestEdge([scale], max_size)]
    return v2.Compose(ops + _to_normalized_float(mean, std))
