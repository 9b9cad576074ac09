"""Drawing detections for people to look at: instances (masks, boxes, class names, scores)
drawn onto uint8 images in a stable colour per class."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class (hues spaced by the golden ratio)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_instances(image: Tensor, target: dict[str, Tensor], class_names: Sequence[str]) -> Tensor:
    """Masks (alpha 0.5, if any), boxes and class names (with ``scores``, if given) of
    ``target`` drawn on a uint8 ``(3, H, W)`` image."""
    labels = target["labels"].tolist()
    if not labels:
        return image
    colors = [class_color(label) for label in labels]
    if "masks" in target:
        image = draw_segmentation_masks(image, target["masks"].bool(), alpha=0.5, colors=colors)
    names = [class_names[label] for label in labels]
    if "scores" in target:
        scores = target["scores"].tolist()
        names = [f"{name} {score:.2f}" for name, score in zip(names, scores, strict=True)]
    return draw_bounding_boxes(image, target["boxes"], labels=names, colors=colors, width=2)
