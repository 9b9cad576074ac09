"""Batching of transformed samples: padded image tensor plus per-image targets."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


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
        )


def pad_images(images: Sequence[Tensor], size_divisibility: int) -> Tensor:
    """Stack (3, h, w) images into (B, 3, Hp, Wp), zero-padded bottom/right to a multiple."""
    height = math.ceil(max(img.shape[-2] for img in images) / size_divisibility)
    width = math.ceil(max(img.shape[-1] for img in images) / size_divisibility)
    first = images[0]
    padded = torch.zeros(
        (len(images), first.shape[0], height * size_divisibility, width * size_divisibility),
        dtype=first.dtype,
        device=first.device,
    )
    for img, slot in zip(images, padded, strict=True):
        slot[:, : img.shape[-2], : img.shape[-1]].copy_(img)
    return padded


class Collate:
    """DataLoader ``collate_fn``: ``(image, target, meta)`` samples → :class:`Batch`."""

    def __init__(self, size_divisibility: int = 32) -> None:
        if size_divisibility < 1:
            raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}")
        self.size_divisibility = size_divisibility

    def __call__(
        self, samples: Sequence[tuple[Tensor, Mapping[str, Tensor], Mapping[str, Any]]]
    ) -> Batch:
        images = [image.as_subclass(Tensor) for image, _, _ in samples]
        return Batch(
            images=pad_images(images, self.size_divisibility),
            image_sizes=[(int(img.shape[-2]), int(img.shape[-1])) for img in images],
            orig_sizes=[tuple(int(s) for s in meta["orig_size"]) for _, _, meta in samples],
            image_ids=[int(meta["image_id"]) for _, _, meta in samples],
            targets=[{k: v.as_subclass(Tensor) for k, v in t.items()} for _, t, _ in samples],
        )
