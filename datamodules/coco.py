"""COCO-format instance segmentation: a validated dataset and its LightningDataModule.

Reads any COCO "instances" file (polygons, compressed or uncompressed RLE, crowd
annotations, images without annotations, non-contiguous category ids). Everything that
can be checked without decoding pixels is checked when the dataset is built, so a broken
file fails before the first training step with a message naming the file, the field and
the fix. Category ids are mapped to contiguous labels ``0..C-1`` in sorted id order.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import tv_tensors
from torchvision.transforms.v2.functional import pil_to_tensor

from datamodules.collate import Collate
from datamodules.sampling import (
    DistributedGroupedBatchSampler,
    ResumableDataLoader,
    SeededEpochSampler,
    distributed_rank,
)
from datamodules.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_test_transforms,
    build_train_transforms,
)
from pointins.evaluation import CocoEvaluator
from pointins.preprocess import Preprocess

logger = logging.getLogger(__name__)

_TOP_LEVEL_KEYS = ("images", "categories")  # "annotations" absent: an image-info file
_IMAGE_FIELDS = ("id", "file_name", "height", "width")
_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox", "segmentation")

Sample = tuple[tv_tensors.Image, dict[str, torch.Tensor], dict[str, Any]]


class DatasetError(ValueError):
    """A dataset file or folder is missing or malformed; the message says which and the fix."""


@dataclass(frozen=True)
class Categories:
    """Class metadata: contiguous label ``i`` is category id ``cat_ids[i]`` named ``names[i]``."""

    cat_ids: list[int]  # sorted ascending; this is label_to_cat_id
    names: list[str]

    @property
    def cat_id_to_label(self) -> dict[int, int]:
        return {cat_id: label for label, cat_id in enumerate(self.cat_ids)}


def load_coco_json(ann_file: str) -> dict[str, Any]:
    """Parse a COCO annotation file and check its top-level keys.

    A file without ``"annotations"`` is an image-info file (COCO's
    ``image_info_test-dev2017.json``): its images are predicted, and the evaluator writes
    the results for the evaluation server instead of scoring them. It is read with an
    empty ``"annotations"`` list, so it trains nothing (the training split then stops,
    naming the file)."""
    if not os.path.isfile(ann_file):
        raise DatasetError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{ann_file}: not valid JSON ({err}); re-export the file") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: the top level must be a JSON object, got {type(data)}")
    missing = [key for key in _TOP_LEVEL_KEYS if key not in data]
    if missing:
        raise DatasetError(
            f"{ann_file}: missing top-level key(s) {missing}; a COCO instances file needs "
            f"{list(_TOP_LEVEL_KEYS)} and 'annotations' (an image-info file may leave "
            "'annotations' out)"
        )
    if "annotations" not in data:
        logger.info(
            "%s: no 'annotations' (an image-info file): its %d images are predicted, not scored",
            ann_file,
            len(data["images"]),
        )
        data["annotations"] = []
    return data


def parse_categories(data: Mapping[str, Any], ann_file: str) -> Categories:
    """Categories of a parsed COCO file, sorted by id."""
    by_id: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        for key, kind in (("id", int), ("name", str)):
            if not isinstance(cat.get(key), kind):
                raise DatasetError(
                    f"{ann_file}: categories[{i}] field '{key}' must be a {kind.__name__}, "
                    f"got {cat.get(key)!r}"
                )
        if cat["id"] in by_id:
            raise DatasetError(f"{ann_file}: categories[{i}] repeats category id {cat['id']}")
        by_id[cat["id"]] = cat["name"]
    if not by_id:
        raise DatasetError(f"{ann_file}: 'categories' is empty; list the classes to learn")
    cat_ids = sorted(by_id)
    return Categories(cat_ids=cat_ids, names=[by_id[c] for c in cat_ids])


def read_categories(ann_file: str) -> Categories:
    """Only the class metadata of an annotation file."""
    return parse_categories(load_coco_json(ann_file), ann_file)


def _index_images(images: list[dict[str, Any]], ann_file: str) -> dict[int, dict[str, Any]]:
    """Image entries by id, after checking their fields."""
    by_id: dict[int, dict[str, Any]] = {}
    for i, img in enumerate(images):
        for key in _IMAGE_FIELDS:
            if key not in img:
                raise DatasetError(f"{ann_file}: images[{i}] has no '{key}' field")
        if not all(isinstance(img[k], int) and img[k] > 0 for k in ("height", "width")):
            raise DatasetError(
                f"{ann_file}: images[{i}] fields 'height'/'width' must be positive integers, "
                f"got {img['height']!r}/{img['width']!r}"
            )
        if img["id"] in by_id:
            raise DatasetError(f"{ann_file}: images[{i}] repeats image id {img['id']}")
        by_id[img["id"]] = img
    return by_id


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _segmentation_problem(segm: Any, height: int, width: int) -> str | None:
    """Why ``segm`` is not a COCO segmentation of an image of that size (None if it is)."""
    if isinstance(segm, list):
        if all(isinstance(p, list) and len(p) % 2 == 0 for p in segm):
            return None
        return "must be a list of polygons [x1, y1, x2, y2, ...] with an even number of values"
    if isinstance(segm, dict):
        if not isinstance(segm.get("counts"), (str, list)) or "size" not in segm:
            return "as RLE must be {'size': [height, width], 'counts': str or list of ints}"
        if list(segm["size"]) != [height, width]:
            return f"RLE size {segm['size']} differs from the image's {[height, width]}"
        return None
    return f"must be a polygon list or an RLE dict, got {type(segm).__name__}"


def _validate_annotation(
    i: int,
    ann: Mapping[str, Any],
    images: Mapping[int, Mapping[str, Any]],
    cat_ids: set[int],
    ann_file: str,
) -> None:
    """Raise DatasetError naming the first problem of ``annotations[i]``."""
    where = f"{ann_file}: annotations[{i}]"
    for key in _ANNOTATION_FIELDS:
        if key not in ann:
            raise DatasetError(f"{where} has no '{key}' field; add it or remove the annotation")
    where += f" (id {ann['id']})"
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
        raise DatasetError(f"{where} field 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
    if ann["category_id"] not in cat_ids:
        raise DatasetError(
            f"{where} field 'category_id' {ann['category_id']!r} is not in 'categories' "
            f"(ids {sorted(cat_ids)}); add the category or fix the annotation"
        )
    img = images.get(ann["image_id"])
    if img is None:
        raise DatasetError(
            f"{where} field 'image_id' {ann['image_id']!r} is not in 'images'; "
            "add the image entry or remove the annotation"
        )
    problem = _segmentation_problem(ann["segmentation"], img["height"], img["width"])
    if problem:
        raise DatasetError(f"{where} field 'segmentation' {problem}")


def clipped_xyxy(bbox: Sequence[float], height: int, width: int) -> list[float]:
    """COCO ``[x, y, w, h]`` → ``[x1, y1, x2, y2]`` clipped to the image."""
    x, y, w, h = bbox
    return [
        min(max(x, 0.0), width),
        min(max(y, 0.0), height),
        min(max(x + w, 0.0), width),
        min(max(y + h, 0.0), height),
    ]


def segmentation_to_rle(segm: list | dict, height: int, width: int) -> dict[str, Any]:
    """One compressed RLE for polygons, uncompressed RLE (list counts) or compressed RLE."""
    if isinstance(segm, list):
        # pycocotools reads a list whose first entry has 4 values as boxes: keep real polygons.
        polygons = [p for p in segm if len(p) >= 6]
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segm["counts"], list):
        return mask_utils.frPyObjects(segm, height, width)
    return {"size": list(segm["size"]), "counts": segm["counts"]}


def decode_masks(segms: Sequence[list | dict], height: int, width: int) -> np.ndarray:
    """(n, H, W) uint8 binary masks of COCO segmentations."""
    if not segms:
        return np.zeros((0, height, width), dtype=np.uint8)
    rles = [segmentation_to_rle(s, height, width) for s in segms]
    return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))  # (n, H, W)


def _has_area(box: Sequence[float], segm: list | dict, height: int, width: int) -> bool:
    """Whether an instance has a box of at least 1 px each way and a non-empty segmentation.

    Polygons rasterising to nothing are only found when decoded (see ``_load_target``).
    """
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        return False
    if isinstance(segm, list):
        return any(len(p) >= 6 for p in segm)
    return int(mask_utils.area(segmentation_to_rle(segm, height, width))) > 0


class _PackedRecords:
    """Records pickled into one numpy buffer.

    Forked DataLoader workers then share one array instead of slowly copying millions of
    Python objects whose reference counts they touch (detectron2 does the same).
    """

    def __init__(self, records: Sequence[Any]) -> None:
        blobs = [np.frombuffer(pickle.dumps(r, protocol=-1), dtype=np.uint8) for r in records]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> Any:
        start = int(self._ends[index - 1]) if index > 0 else 0
        return pickle.loads(self._buffer[start : int(self._ends[index])].tobytes())


class CocoInstanceDataset(Dataset):
    """Images of a COCO instances file with their non-crowd instances as training targets.

    An item is ``(image, target, meta)``: ``image`` a ``tv_tensors.Image`` (3, h, w) uint8
    (float once normalised by ``transforms``), ``target`` ``{"boxes": BoundingBoxes XYXY,
    "masks": Mask (n, h, w) uint8, "labels": (n,) int64}``, ``meta`` ``{"image_id": int,
    "orig_size": (H0, W0), "instances_dropped": int}``, the last the instances the
    transforms removed (a box under 1 px after crop and resize), which training logs as
    ``data/instances_dropped`` per epoch. Crowd annotations are never targets (they stay
    in the file for the evaluator). Instances with a box under 1 px or an empty mask are
    dropped and counted in a log line. Images left without instances are dropped unless
    ``keep_empty``.
    """

    # why an image counts as empty (it is then dropped unless keep_empty)
    empty_reason = "no non-crowd instance with a box and a mask"

    def __init__(
        self,
        ann_file: str,
        img_dir: str,
        transforms: Callable[..., Any] | None = None,
        keep_empty: bool = True,
    ) -> None:
        self.ann_file = ann_file
        self.img_dir = img_dir
        self.transforms = transforms
        data = load_coco_json(ann_file)
        self.categories = parse_categories(data, ann_file)
        records = self._build_records(data)
        self.num_listed = len(records)  # images in the file, before dropping empty ones
        if not keep_empty:
            records = [r for r in records if r["instances"]]
            logger.info(
                "%s: dropped %d of %d images without (non-crowd) instances from this set "
                "(data.train_keep_empty=true keeps them)",
                ann_file,
                self.num_listed - len(records),
                self.num_listed,
            )
        self._check_image_files(records)
        self._records = _PackedRecords(records)
        self._sizes = [(r["height"], r["width"]) for r in records]
        self._reported_empty_masks: set[int] = set()

    def _build_records(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """One record per image with its valid non-crowd instances; logs what was dropped."""
        if not os.path.isdir(self.img_dir):
            raise DatasetError(
                f"image folder not found: {self.img_dir} (images of {self.ann_file})"
            )
        images = _index_images(data["images"], self.ann_file)
        cat_ids = set(self.categories.cat_ids)
        to_label = self.categories.cat_id_to_label
        instances: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in images}
        num_degenerate = 0
        for i, ann in enumerate(data["annotations"]):
            _validate_annotation(i, ann, images, cat_ids, self.ann_file)
            if ann.get("iscrowd", 0):
                continue
            img = images[ann["image_id"]]
            box = clipped_xyxy(ann["bbox"], img["height"], img["width"])
            if not _has_area(box, ann["segmentation"], img["height"], img["width"]):
                num_degenerate += 1
                continue
            instances[ann["image_id"]].append(
                {
                    "id": ann["id"],
                    "label": to_label[ann["category_id"]],
                    "box": box,
                    "segmentation": ann["segmentation"],
                }
            )
        if num_degenerate:
            logger.warning(
                "%s: dropped %d degenerate annotations (box under 1 px after clipping to the "
                "image, or empty segmentation)",
                self.ann_file,
                num_degenerate,
            )
        return [
            {**{k: img[k] for k in _IMAGE_FIELDS}, "instances": instances[image_id]}
            for image_id, img in images.items()
        ]

    def _check_image_files(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Fail now, not mid-epoch, when image files listed in the annotation file are absent."""
        missing = [
            r["file_name"]
            for r in records
            if not os.path.isfile(os.path.join(self.img_dir, r["file_name"]))
        ]
        if missing:
            raise DatasetError(
                f"{len(missing)} image file(s) listed in {self.ann_file} are missing from "
                f"{self.img_dir}, e.g. {os.path.join(self.img_dir, missing[0])}; "
                "check the image folder or remove those entries from 'images'"
            )

    def __len__(self) -> int:
        return len(self._records)

    def orientations(self) -> list[int]:
        """1 for landscape (w > h), 0 otherwise, per image: the aspect-ratio groups."""
        return [int(w > h) for h, w in self._sizes]

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        """``dataset[i]``, or ``dataset[(i, seed)]`` to draw the augmentation from ``seed``
        (see :class:`~datamodules.sampling.SeededEpochSampler`)."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        record = self._records[index]
        image = self._load_image(record)
        target = self._load_target(record)
        loaded = len(target["labels"])
        if self.transforms is not None:
            if seed is None:
                image, target = self.transforms(image, target)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    image, target = self.transforms(image, target)
        meta = {
            "image_id": record["id"],
            "orig_size": (record["height"], record["width"]),
            "instances_dropped": loaded - len(target["labels"]),
        }
        return image, target, meta

    def _load_image(self, record: Mapping[str, Any]) -> tv_tensors.Image:
        """The RGB image file, checked against the size the annotation file gives."""
        path = os.path.join(self.img_dir, record["file_name"])
        try:
            with Image.open(path) as file:
                image = pil_to_tensor(file.convert("RGB"))  # (3, H, W) uint8
        except OSError as err:
            raise DatasetError(
                f"cannot read image {path} (listed in {self.ann_file}): {err}"
            ) from err
        if tuple(image.shape[-2:]) != (record["height"], record["width"]):
            raise DatasetError(
                f"image {path} is {tuple(image.shape[-2:])} (h, w) but {self.ann_file} says "
                f"height={record['height']}, width={record['width']}; fix the 'images' entry"
            )
        return tv_tensors.Image(image)

    def _load_target(self, record: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Boxes, masks and labels of the record's instances whose mask is not empty."""
        height, width = record["height"], record["width"]
        instances = record["instances"]
        masks = torch.from_numpy(
            decode_masks([inst["segmentation"] for inst in instances], height, width)
        )  # (n, H, W)
        keep = masks.flatten(1).any(dim=1).tolist()
        self._report_empty_masks(
            [inst["id"] for inst, k in zip(instances, keep, strict=True) if not k]
        )
        kept = [inst for inst, k in zip(instances, keep, strict=True) if k]
        boxes = torch.tensor([inst["box"] for inst in kept], dtype=torch.float32).reshape(-1, 4)
        return {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "masks": tv_tensors.Mask(masks[torch.tensor(keep, dtype=torch.bool)]),
            "labels": torch.tensor([inst["label"] for inst in kept], dtype=torch.int64),
        }

    def _report_empty_masks(self, ann_ids: Sequence[int]) -> None:
        """Warn once per annotation (per process) whose polygon rasterises to no pixel."""
        new = [a for a in ann_ids if a not in self._reported_empty_masks]
        if new:
            self._reported_empty_masks.update(new)
            logger.warning(
                "%s: dropped annotation(s) %s whose mask decodes to no pixel", self.ann_file, new
            )


def _resolve(root: str, path: str) -> str:
    """Absolute path of ``path``, taken relative to ``root`` unless already absolute."""
    return os.path.abspath(os.path.join(os.path.expanduser(root), os.path.expanduser(path)))


class CocoDataModule(pl.LightningDataModule):
    """COCO-format train/val data; relative paths are relative to ``root``.

    Class metadata (``num_classes``, ``class_names``, ``label_to_cat_id``) is available
    right after construction (after ``prepare_data`` for generated data): it is read
    lazily from the categories of the val annotation file, or of the train file where
    there is no val file. ``setup("fit")`` checks that train and val agree.
    """

    def __init__(
        self,
        root: str,
        train_ann: str = "annotations/instances_train2017.json",
        train_img_dir: str = "train2017",
        val_ann: str = "annotations/instances_val2017.json",
        val_img_dir: str = "val2017",
        train_scales: Sequence[int] = (800,),
        max_size: int = 1333,
        test_scale: int = 800,
        hflip_prob: float = 0.5,
        crop: Mapping[str, Any] | None = None,
        batch_size: int = 16,
        val_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        train_keep_empty: bool = False,
        size_divisibility: int = 32,
        size_buckets: Sequence[int] | None = None,
        seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.root = str(root)
        self.train_ann_file = _resolve(self.root, train_ann)
        self.train_img_dir = _resolve(self.root, train_img_dir)
        self.val_ann_file = _resolve(self.root, val_ann)
        self.val_img_dir = _resolve(self.root, val_img_dir)
        self.train_scales = [int(s) for s in train_scales]
        self.max_size = int(max_size)
        self.test_scale = int(test_scale)
        self.hflip_prob = float(hflip_prob)
        self.crop = dict(crop) if crop else None
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.train_keep_empty = bool(train_keep_empty)
        self.collate = Collate(int(size_divisibility))  # evaluation: no buckets
        self.train_collate = Collate(int(size_divisibility), size_buckets)
        self.seed = int(seed)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._categories: Categories | None = None
        self._train_dataset: CocoInstanceDataset | None = None
        self._val_dataset: CocoInstanceDataset | None = None

    def _require(self, path: str, option: str) -> str:
        """``path`` if it exists, else a DatasetError naming the option that set it."""
        if not os.path.exists(path):
            raise DatasetError(
                f"not found: {path}. Set data.{option} (absolute, or relative to "
                f"data.root={self.root!r}) or data.root to where the dataset is"
            )
        return path

    def read_categories(self) -> Categories:
        """Class metadata from the val annotation file (the train file if val is absent)."""
        if self._categories is None:
            if os.path.exists(self.val_ann_file):
                self._categories = read_categories(self.val_ann_file)
            else:
                self._categories = read_categories(self._require(self.train_ann_file, "train_ann"))
        return self._categories

    def build_evaluator(self, output_dir: str | Path) -> CocoEvaluator:
        """The evaluator for this dataset's validation split (bbox and segm AP)."""
        return CocoEvaluator(self.val_ann_file, self.label_to_cat_id, output_dir)

    @property
    def num_classes(self) -> int:
        return len(self.read_categories().cat_ids)

    @property
    def class_names(self) -> list[str]:
        return self.read_categories().names

    @property
    def label_to_cat_id(self) -> list[int]:
        return self.read_categories().cat_ids

    @property
    def preprocess(self) -> Preprocess:
        """The test-time resize, normalisation and padding, as a checkpoint stores them."""
        return Preprocess(
            self.test_scale, self.max_size, self.collate.size_divisibility, self.mean, self.std
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the val dataset, and the train dataset for ``fit`` (or no stage)."""
        if self._val_dataset is None:
            self._val_dataset = CocoInstanceDataset(
                self._require(self.val_ann_file, "val_ann"),
                self._require(self.val_img_dir, "val_img_dir"),
                build_test_transforms(self.test_scale, self.max_size, self.mean, self.std),
                keep_empty=True,
            )
        if stage in ("fit", None) and self._train_dataset is None:
            self._train_dataset = CocoInstanceDataset(
                self._require(self.train_ann_file, "train_ann"),
                self._require(self.train_img_dir, "train_img_dir"),
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
            self._check_same_categories(self._train_dataset, self._val_dataset)
            self._check_trainable(
                self._train_dataset,
                self.train_ann_file,
                "Set data.train_ann to a file that lists annotated training images",
            )

    def _check_trainable(self, dataset: CocoInstanceDataset, source: str, fix: str) -> None:
        """Stop before training when the training split kept no image (zero steps)."""
        if len(dataset):
            return
        dropped = dataset.num_listed - len(dataset)
        raise DatasetError(
            f"{source}: no training images: {dataset.num_listed} listed, {dropped} dropped as "
            f"empty ({dataset.empty_reason}), 0 left. "
            f"{fix}, or set data.train_keep_empty=true to train on images without instances."
        )

    @staticmethod
    def _check_same_categories(train: CocoInstanceDataset, val: CocoInstanceDataset) -> None:
        """Labels must mean the same classes in training and evaluation."""
        if train.categories != val.categories:
            raise DatasetError(
                f"the 'categories' of {train.ann_file} and {val.ann_file} differ; "
                "both files must list the same category ids and names"
            )

    @property
    def train_dataset(self) -> CocoInstanceDataset:
        if self._train_dataset is None:
            raise RuntimeError("call setup('fit') before using the training set")
        return self._train_dataset

    @property
    def val_dataset(self) -> CocoInstanceDataset:
        if self._val_dataset is None:
            raise RuntimeError("call setup() before using the validation set")
        return self._val_dataset

    def train_dataloader(self) -> ResumableDataLoader:
        """This process's share of the shuffled batches, each of one orientation; order and
        augmentation are functions of (seed, epoch) only, whatever the number of processes."""
        dataset = self.train_dataset
        batch_sampler = DistributedGroupedBatchSampler(
            SeededEpochSampler(len(dataset), self.seed),
            self.batch_size,
            group_ids=dataset.orientations(),
        )
        return ResumableDataLoader(
            dataset,
            batch_sampler,
            batches_done=self._batches_done,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=self.train_collate,
        )

    def _batches_done(self) -> int:
        """Batches of the current training epoch trained already: Lightning's counter, which
        a checkpoint written inside an epoch restores (0 when an epoch starts)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def val_dataloader(self) -> DataLoader:
        """Batches in file order; with several processes each evaluates every
        ``world_size``-th image (the evaluator merges them on rank 0)."""
        rank, world_size = distributed_rank()
        sampler = None
        if world_size > 1:
            sampler = DistributedSampler(
                self.val_dataset, num_replicas=world_size, rank=rank, shuffle=False
            )
        return DataLoader(
            self.val_dataset,
            batch_size=self.val_batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=self.collate,
        )
