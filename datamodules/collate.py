"""Batching of transformed samples: padded image tensor plus per-image targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from pointins.structures import Batch, pad_images

__all__ = ["Batch", "Collate", "pad_images"]


class Collate:
    """DataLoader ``collate_fn``: ``(image, target, meta)`` samples → :class:`Batch`.

    Images are zero-padded to a multiple of ``size_divisibility``; with ``size_buckets``
    each side is padded further to the smallest bucket that holds it, so that a compiled
    model (``model.compile=true``) meets a bounded set of input shapes.
    """

    def __init__(
        self, size_divisibility: int = 32, size_buckets: Sequence[int] | None = None
    ) -> None:
        if size_divisibility < 1:
            raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}")
        buckets = sorted(int(b) for b in (size_buckets or ()))
        bad = [b for b in buckets if b < 1 or b % size_divisibility]
        if bad:
            raise ValueError(
                f"data.size_buckets {bad} must be positive multiples of "
                f"data.size_divisibility={size_divisibility}"
            )
        self.size_divisibility = size_divisibility
        self.size_buckets = tuple(buckets)

    def __call__(
        self, samples: Sequence[tuple[Tensor, Mapping[str, Tensor], Mapping[str, Any]]]
    ) -> Batch:
        images = [image.as_subclass(Tensor) for image, _, _ in samples]
        return Batch(
            images=pad_images(images, self.size_divisibility, self.size_buckets),
            image_sizes=[(int(img.shape[-2]), int(img.shape[-1])) for img in images],
            orig_sizes=[tuple(int(s) for s in meta["orig_size"]) for _, _, meta in samples],
            image_ids=[int(meta["image_id"]) for _, _, meta in samples],
            targets=[{k: v.as_subclass(Tensor) for k, v in t.items()} for _, t, _ in samples],
            instances_dropped=sum(int(meta.get("instances_dropped", 0)) for _, _, meta in samples),
        )
