"""Look at what the model is trained on: training samples after transforms, drawn in a grid.

    python -m datamodules.preview [overrides]   # e.g. data=shapes preview.num=4

writes ``preview.out`` (default ``preview.png``, relative to the directory the command
ran in) with ``preview.num`` samples (default 16) drawn with seed ``preview.seed`` (0).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.nn import functional as nnf
from torchvision.transforms.v2.functional import to_pil_image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class (hues spaced by the golden ratio)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def denormalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalised float (3, H, W) → uint8 (3, H, W)."""
    mean_t = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype).view(3, 1, 1)
    return ((image * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8)


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


def render_preview(datamodule: Any, num: int = 16, seed: int = 0) -> Tensor:
    """A uint8 (3, H, W) grid of ``num`` random transformed training samples.

    ``datamodule`` must be set up for ``fit``; it provides ``train_dataset`` (items
    ``(image, target, meta)``), ``class_names``, ``mean`` and ``std``. The choice of
    samples and their random augmentations depend only on ``seed``.
    """
    dataset = datamodule.train_dataset
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        indices = torch.randperm(len(dataset))[:num].tolist()
        samples = [dataset[i] for i in indices]
    tiles = [
        draw_instances(
            denormalize(image.as_subclass(Tensor), datamodule.mean, datamodule.std),
            target,
            datamodule.class_names,
        )
        for image, target, _ in samples
    ]
    height = max(t.shape[-2] for t in tiles)
    width = max(t.shape[-1] for t in tiles)
    padded = [nnf.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2])) for t in tiles]
    return make_grid(padded, nrow=math.ceil(math.sqrt(len(padded))), padding=8, pad_value=255)


@hydra.main(version_base="1.3", config_path="../conf", config_name="preview")
def main(cfg: DictConfig) -> None:
    """Instantiate ``cfg.data``, render the preview and write it as PNG."""
    options = cfg.preview
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    grid = render_preview(datamodule, options.num, options.seed)
    out = hydra.utils.to_absolute_path(options.out)
    to_pil_image(grid).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
