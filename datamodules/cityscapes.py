"""Cityscapes instance segmentation from its official folder layout.

::

    root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png
    root/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_polygons.json

The classes are Cityscapes' 8 "thing" classes as ``cityscapesscripts.helpers.labels``
defines them (``hasInstances and not ignoreInEval``: person, rider, car, truck, bus, train,
motorcycle, bicycle); contiguous label ``i`` is the ``i``-th of them by label id.

Instances come from the instance-id PNGs, whose pixels hold ``label_id * 1000 + k`` for
instance ``k`` of a thing class, and a bare label id below 1000 elsewhere. A thing label
id below 1000 marks a *group* region (e.g. a crowd of people annotated as one polygon):
like COCO's crowd annotations, groups are never training targets, and the official
evaluation ignores predictions that fall on them. Samples have exactly the structure of
:class:`~datamodules.coco.CocoInstanceDataset`'s and go through the same transforms,
collate function and sampler.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2.functional import pil_to_tensor

from datamodules.coco import (
    Categories,
    CocoDataModule,
    CocoInstanceDataset,
    DatasetError,
    _PackedRecords,
)
from datamodules.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_test_transforms,
    build_train_transforms,
    masks_to_tight_boxes,
)
from pointins.evaluation import CityscapesEvaluator, CityscapesImage

logger = logging.getLogger(__name__)

# Cityscapes' instance ids: label_id * INSTANCE_ID_DIVISOR + k; a bare label id is a group.
INSTANCE_ID_DIVISOR = 1000
# The classes evaluated at instance level: the official script's ``setInstanceLabels``.
THING_LABELS = [
    label for label in CITYSCAPES_LABELS if label.hasInstances and not label.ignoreInEval
]
SPLITS_WITH_ANNOTATIONS = ("train", "val")
_IMAGE_SUFFIX = "_leftImg8bit.png"
_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
_POLYGON_SUFFIX = "_gtFine_polygons.json"
_DOWNLOAD_HINT = (
    "data.root must hold leftImg8bit/ and gtFine/ as unpacked from leftImg8bit_trainvaltest.zip "
    "and gtFine_trainvaltest.zip (https://www.cityscapes-dataset.com/downloads/)"
)


def cityscapes_categories() -> Categories:
    """The 8 thing classes: label ``i`` is Cityscapes label id ``cat_ids[i]``."""
    things = sorted(THING_LABELS, key=lambda label: label.id)
    return Categories(
        cat_ids=[label.id for label in things], names=[label.name for label in things]
    )


def instances_from_id_map(
    id_map: np.ndarray, label_ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The instances of an instance-id map, in increasing id order.

    Args:
        id_map: (H, W) integer Cityscapes instance ids.
        label_ids: the Cityscapes label ids to keep, in training-label order.

    Returns ``masks`` (n, H, W) bool and ``labels`` (n,) int64 (indices into ``label_ids``).
    Group regions (ids below 1000) and instances of other classes are left out.
    """
    ids = np.unique(id_map)  # (u,) sorted
    ids = ids[ids >= INSTANCE_ID_DIVISOR]
    to_label = {int(label_id): label for label, label_id in enumerate(label_ids)}
    classes = (ids // INSTANCE_ID_DIVISOR).tolist()
    keep = [c in to_label for c in classes]
    ids = ids[np.asarray(keep, dtype=bool)]  # (n,)
    labels = np.asarray([to_label[c] for c, k in zip(classes, keep, strict=True) if k], np.int64)
    masks = id_map[None] == ids[:, None, None]  # (n, H, W)
    return masks, labels


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) from a PNG's header; DatasetError naming the file if it is unreadable."""
    try:
        with Image.open(path) as file:
            width, height = file.size
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err}; re-extract the file") from err
    return height, width


def _has_things(polygon_file: str, thing_names: set[str]) -> bool:
    """Whether the polygons file lists an object of a thing class (a group does not count)."""
    try:
        with open(polygon_file) as f:
            objects = json.load(f)["objects"]
        return any(obj["label"] in thing_names for obj in objects if not obj.get("deleted", 0))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(
            f"cannot read {polygon_file}: {err!r}; expected Cityscapes' polygons JSON "
            "({'imgHeight', 'imgWidth', 'objects': [{'label', 'polygon'}, ...]}), re-extract it"
        ) from err


def find_samples(root: str, split: str) -> list[dict[str, Any]]:
    """One record per image of ``root/leftImg8bit/<split>``, cities and files in sorted order.

    Records hold ``id`` (the position), ``file_name`` (image path), ``height``, ``width``,
    ``core`` (``<city>_<seq>_<frame>``) and, for train and val, ``instance_file`` and
    ``polygon_file``. Raises :class:`DatasetError` for a missing folder, a city whose images
    have no annotation files, or a PNG whose header cannot be read.
    """
    image_root = os.path.join(root, "leftImg8bit", split)
    if not os.path.isdir(image_root):
        raise DatasetError(f"Cityscapes image folder not found: {image_root}; {_DOWNLOAD_HINT}")
    with_annotations = split in SPLITS_WITH_ANNOTATIONS
    gt_root = os.path.join(root, "gtFine", split)
    if with_annotations and not os.path.isdir(gt_root):
        raise DatasetError(f"Cityscapes annotation folder not found: {gt_root}; {_DOWNLOAD_HINT}")
    records: list[dict[str, Any]] = []
    for city in sorted(os.listdir(image_root)):
        city_dir = os.path.join(image_root, city)
        if not os.path.isdir(city_dir):
            continue
        names = sorted(n for n in os.listdir(city_dir) if n.endswith(_IMAGE_SUFFIX))
        cores = [n.removesuffix(_IMAGE_SUFFIX) for n in names]
        if with_annotations:
            _check_city_annotations(city, city_dir, os.path.join(gt_root, city), cores)
        for core in cores:
            record = {"id": len(records), "core": core, "city": city}
            record["file_name"] = os.path.join(city_dir, core + _IMAGE_SUFFIX)
            record["height"], record["width"] = _image_size(record["file_name"])
            if with_annotations:
                gt_stem = os.path.join(gt_root, city, core)
                record["instance_file"] = gt_stem + _INSTANCE_SUFFIX
                record["polygon_file"] = gt_stem + _POLYGON_SUFFIX
                if _image_size(record["instance_file"]) != (record["height"], record["width"]):
                    raise DatasetError(
                        f"{record['instance_file']} is {_image_size(record['instance_file'])} "
                        f"(h, w) but its image {record['file_name']} is "
                        f"{(record['height'], record['width'])}; re-extract gtFine"
                    )
            records.append(record)
    if not records:
        raise DatasetError(
            f"no *{_IMAGE_SUFFIX} image under {image_root}/<city>/; {_DOWNLOAD_HINT}"
        )
    return records


def _check_city_annotations(city: str, image_dir: str, gt_dir: str, cores: list[str]) -> None:
    """Every image of a city needs its instance-id PNG and polygons JSON."""
    if cores and not os.path.isdir(gt_dir):
        raise DatasetError(
            f"city {city!r} has {len(cores)} images in {image_dir} but no annotation folder "
            f"{gt_dir}; extract gtFine for this city or remove its image folder"
        )
    missing = [
        os.path.join(gt_dir, core + suffix)
        for core in cores
        for suffix in (_INSTANCE_SUFFIX, _POLYGON_SUFFIX)
        if not os.path.isfile(os.path.join(gt_dir, core + suffix))
    ]
    if missing:
        raise DatasetError(
            f"city {city!r}: {len(missing)} annotation file(s) missing for images in "
            f"{image_dir}, e.g. {missing[0]}; extract gtFine completely or remove those images"
        )


class CityscapesInstanceDataset(CocoInstanceDataset):
    """The images of one Cityscapes split with their thing instances as targets.

    Items are those of :class:`~datamodules.coco.CocoInstanceDataset` (``image, target,
    meta``, ``dataset[(index, seed)]`` for seeded augmentation, ``orientations()``), with
    ``meta["image_id"]`` the image's position in the split (cities, then files, sorted).
    Instances are read from the instance-id PNGs (groups never are targets); the test split
    has no annotations and gives empty targets. Images whose polygons list no thing object
    are dropped unless ``keep_empty`` (their count is logged).
    """

    empty_reason = "its polygons list no thing object"

    def __init__(
        self,
        root: str,
        split: str,
        transforms: Callable[..., Any] | None = None,
        keep_empty: bool = True,
    ) -> None:
        # CocoInstanceDataset.__init__ reads a COCO file; only its item protocol is shared.
        self.root = root
        self.split = split
        self.transforms = transforms
        self.categories = cityscapes_categories()
        records = find_samples(root, split)
        self.num_listed = len(records)  # images of the split, before dropping empty ones
        if not keep_empty and split in SPLITS_WITH_ANNOTATIONS:
            things = set(self.categories.names)
            kept = [r for r in records if _has_things(r["polygon_file"], things)]
            logger.info(
                "Cityscapes %s: dropped %d of %d images whose polygons list no thing object "
                "(data.train_keep_empty=true keeps them)",
                split,
                len(records) - len(kept),
                len(records),
            )
            records = [{**r, "id": i} for i, r in enumerate(kept)]
        self._records = _PackedRecords(records)
        self._sizes = [(r["height"], r["width"]) for r in records]
        self.images = {
            r["id"]: CityscapesImage(
                r["file_name"], r["height"], r["width"], r.get("instance_file")
            )
            for r in records
        }

    def _load_image(self, record: Mapping[str, Any]) -> tv_tensors.Image:
        path = record["file_name"]
        try:
            with Image.open(path) as file:
                return tv_tensors.Image(pil_to_tensor(file.convert("RGB")))  # (3, H, W) uint8
        except OSError as err:
            raise DatasetError(f"cannot read image {path}: {err}; re-extract the file") from err

    def _load_target(self, record: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Boxes (tight around the masks), masks and labels of the image's thing instances."""
        height, width = record["height"], record["width"]
        if "instance_file" in record:
            masks, labels = instances_from_id_map(
                self._read_id_map(record["instance_file"]), self.categories.cat_ids
            )
        else:
            masks, labels = np.zeros((0, height, width), bool), np.zeros(0, np.int64)
        masks_t = torch.from_numpy(masks).to(torch.uint8)  # (n, H, W)
        return {
            "boxes": tv_tensors.BoundingBoxes(
                masks_to_tight_boxes(masks_t.bool()), format="XYXY", canvas_size=(height, width)
            ),
            "masks": tv_tensors.Mask(masks_t),
            "labels": torch.from_numpy(labels),
        }

    @staticmethod
    def _read_id_map(path: str) -> np.ndarray:
        """(H, W) int32 instance ids of a gtFine instance-id PNG."""
        try:
            with Image.open(path) as file:
                return np.array(file, dtype=np.int32)
        except OSError as err:
            raise DatasetError(f"cannot read {path}: {err}; re-extract gtFine") from err


class CityscapesDataModule(CocoDataModule):
    """Cityscapes train/val (or test) data in the official layout under ``root``.

    ``split`` is the evaluated split: ``val`` scores with the official instance-level
    script, ``test`` writes the benchmark server's submission zip. Transforms, batching,
    sampling and the loader options are :class:`~datamodules.coco.CocoDataModule`'s (its
    COCO annotation-path attributes are not used here). Default scales are the paper's:
    shorter side from {800, 832, ..., 1024} in training, 1024 at test, longer side ≤ 2048.
    """

    def __init__(
        self,
        root: str,
        split: str = "val",
        train_split: str = "train",
        train_scales: Sequence[int] = tuple(range(800, 1025, 32)),
        max_size: int = 2048,
        test_scale: int = 1024,
        keep_predictions: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        **loader_options: Any,
    ) -> None:
        super().__init__(
            root,
            train_scales=train_scales,
            max_size=max_size,
            test_scale=test_scale,
            mean=mean,
            std=std,
            **loader_options,
        )
        if split not in ("train", "val", "test") or train_split not in SPLITS_WITH_ANNOTATIONS:
            raise ValueError(
                f"data.split={split!r} / data.train_split={train_split!r}: evaluate on train, "
                "val or test and train on train or val"
            )
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.split = split
        self.train_split = train_split
        self.keep_predictions = bool(keep_predictions)

    def read_categories(self) -> Categories:
        """The 8 thing classes (fixed by Cityscapes; no file is read)."""
        if self._categories is None:
            self._categories = cityscapes_categories()
        return self._categories

    def setup(self, stage: str | None = None) -> None:
        """Index the evaluated split, and the training split for ``fit`` (or no stage)."""
        if self._val_dataset is None:
            self._val_dataset = CityscapesInstanceDataset(
                self.root,
                self.split,
                build_test_transforms(self.test_scale, self.max_size, self.mean, self.std),
                keep_empty=True,
            )
        if stage in ("fit", None) and self._train_dataset is None:
            self._train_dataset = CityscapesInstanceDataset(
                self.root,
                self.train_split,
                build_train_transforms(
                    self.train_scales,
                    self.max_size,
                    self.hflip_prob,
                    self.crop,
                    self.mean,
                    self.std,
                ),
                keep_empty=self.train_keep_empty,
            )
            self._check_trainable(
                self._train_dataset,
                os.path.join(self.root, "gtFine", self.train_split),
                "Check data.root and data.train_split",
            )

    def build_evaluator(self, output_dir: str | Path) -> CityscapesEvaluator:
        """The official instance-level evaluation of ``split`` (val), or the test submission."""
        return CityscapesEvaluator(
            self.val_dataset.images,
            self.label_to_cat_id,
            output_dir,
            keep_predictions=self.keep_predictions,
        )
