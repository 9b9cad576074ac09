"""The embedded dataset as a datamodule: generated on first use, then read as COCO (or in
Cityscapes' layout, scored by the official Cityscapes script)."""

from __future__ import annotations

from datamodules.cityscapes import CityscapesDataModule
from datamodules.coco import CocoDataModule
from datamodules.synthetic import generate_shapes


class _GeneratedOnFirstUse:
    """``prepare_data`` writes the shapes dataset into ``root`` in ``layout``
    (deterministically, from ``generator_seed``) the first time and reuses it afterwards."""

    layout = "coco"

    def __init__(
        self, *args, num_train: int = 1000, num_val: int = 200, generator_seed: int = 0, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.num_train = num_train
        self.num_val = num_val
        self.generator_seed = generator_seed

    def prepare_data(self) -> None:
        generate_shapes(
            self.root, self.num_train, self.num_val, self.generator_seed, layout=self.layout
        )


class ShapesDataModule(_GeneratedOnFirstUse, CocoDataModule):
    """A :class:`CocoDataModule` over the generated shapes dataset in ``root``."""


class ShapesCityscapesDataModule(_GeneratedOnFirstUse, CityscapesDataModule):
    """A :class:`CityscapesDataModule` over the same generated scenes in Cityscapes' layout
    (shape classes mapped onto the 8 thing classes, see ``datamodules.synthetic_cityscapes``),
    so that training is scored by the official Cityscapes script with no download."""

    layout = "cityscapes"
