"""Look at what the model is trained on: training samples after transforms, drawn in a grid.

    python -m datamodules.preview [overrides]   # e.g. data=shapes preview.num=4

writes ``preview.out`` (default ``preview.png``, relative to the directory the command
ran in) with ``preview.num`` samples (default 16) drawn with seed ``preview.seed`` (0).
"""

from __future__ import annotations

import math
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.nn import functional as nnf
from torchvision.transforms.v2.functional import to_pil_image
from torchvision.utils import make_grid

from pointins.inference.visualize import class_color, draw_instances
from pointins.preprocess import denormalize

# the drawing helpers live in pointins.inference.visualize; re-exported for this module's callers
__all__ = ["class_color", "denormalize", "draw_instances", "main", "render_preview"]


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
