"""What inference does to an image before the network, as stored in every checkpoint.

A model trained at one scale and normalisation must be run at the same ones: a
:class:`Preprocess` is written into the checkpoint from the training data config
(``data.test_scale``, ``data.max_size``, ``data.size_divisibility``, ``data.mean``,
``data.std``), and :class:`~pointins.inference.predictor.Predictor`, ``eval.py predict`` and the
ONNX export read it from there. The ops are those of the datamodules' test pipeline
(``datamodules.transforms.build_test_transforms``), so an image is seen exactly as in
evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from pointins.structures import pad_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def denormalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalised float (3, H, W) → uint8 (3, H, W)."""
    mean_t = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype).view(3, 1, 1)
    return ((image * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8)


def resized_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """Output (h, w) with shorter side ``short``, unless the longer one would exceed ``max_size``.

    Rounds to the nearest pixel (detectron2's ``ResizeShortestEdge``), so the shorter side
    is exactly ``short`` whenever the cap does not apply.
    """
    scale = short / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


@dataclass(frozen=True)
class Preprocess:
    """Test-time resize (shorter side ``test_scale``, longer side at most ``max_size``),
    scaling to [0, 1], normalisation by ``mean`` / ``std``, and zero padding of a batch
    to a multiple of ``size_divisibility``."""

    test_scale: int = 800
    max_size: int = 1333
    size_divisibility: int = 32
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in ("test_scale", "max_size", "size_divisibility"):
            value = getattr(self, name)
            if int(value) < 1:
                raise ValueError(f"preprocess.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"preprocess.{name} needs 3 values (R, G, B), got {value}")
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocess:
        """From a checkpoint's ``hyper_parameters["preprocess"]``; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain containers, for the checkpoint (loadable with ``weights_only=True``)."""
        out = dataclasses.asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def differences(self, other: Preprocess) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's, other's)}`` for every field where the two differ."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        }

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of an ``height x width`` image after the resize."""
        return resized_shape(height, width, self.test_scale, self.max_size)

    def image(self, image: Tensor) -> Tensor:
        """``(3, H, W)`` uint8 RGB -> ``(3, h, w)`` float32, resized and normalised."""
        size = list(self.output_size(*image.shape[-2:]))
        resized = F.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        scaled = F.to_dtype(resized, torch.float32, scale=True)
        return F.normalize(scaled, mean=list(self.mean), std=list(self.std))

    def batch(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """``(3, H_i, W_i)`` uint8 images -> ``(B, 3, Hp, Wp)`` padded batch and each
        image's resized ``(h, w)``."""
        inputs = [self.image(image) for image in images]  # each (3, h, w)
        return pad_images(inputs, self.size_divisibility), [tuple(x.shape[-2:]) for x in inputs]
