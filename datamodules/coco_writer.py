"""Writing the synthetic shapes scenes as a COCO-format split: JPEG images and one
instances JSON (RLE masks, boxes, areas, crowd flags, and per-split statistics in ``info``).

``CocoFiles`` says where a layout puts a split's images and annotation file and which
categories the file lists; ``COCO_FILES`` is the default layout::

    root/images/train/000000000001.jpg ...      file_name is relative to images/<split>/
    root/images/val/...
    root/annotations/instances_train.json
    root/annotations/instances_val.json
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from datamodules.scenes import CATEGORIES, GENERATOR_VERSION, render_indexed

# COCO area ranges (pycocotools COCOeval): small < 32², medium 32²..96², large > 96².
SMALL_MAX, MEDIUM_MAX = 32**2, 96**2
JPEG_QUALITY = 90


def mask_to_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> compressed COCO RLE with a str ``counts``."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_to_bbox(mask: np.ndarray) -> list[int]:
    """Tight COCO box [x, y, w, h] with w = last col + 1 - first col."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    return [int(cols[0]), int(rows[0]), int(cols[-1] + 1 - cols[0]), int(rows[-1] + 1 - rows[0])]


def area_range(area: int) -> str:
    """COCO area range name of a mask area in pixels."""
    return "small" if area < SMALL_MAX else "medium" if area <= MEDIUM_MAX else "large"


def _empty_stats() -> dict:
    return {
        "images": 0,
        "empty_images": 0,
        "instances": 0,
        "crowd": 0,
        "small": 0,
        "medium": 0,
        "large": 0,
        "occluded": 0,
        "dropped": 0,
    }


@dataclass
class _EncodedImage:
    """What a worker sends back for one image: JPEG bytes and id-less annotations."""

    jpeg: bytes
    height: int
    width: int
    # per instance: "label" (shape class, index into CATEGORIES), then the COCO fields
    # segmentation, area, bbox, iscrowd (id, image_id and category_id are the writer's)
    annotations: list[dict]
    stats: dict


def encode_jpeg(image: np.ndarray) -> bytes:
    """The JPEG file (quality ``JPEG_QUALITY``) of an (H, W, 3) uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _encode_image(job: tuple[str, int, int]) -> _EncodedImage:
    """Render image ``index`` of ``split`` and encode it (runs in worker processes)."""
    split, index, seed = job
    scene = render_indexed(split, index, seed)
    height, width = scene.image.shape[:2]
    stats = _empty_stats()
    stats["images"] = 1
    stats["empty_images"] = int(len(scene.labels) == 0)
    stats["dropped"] = scene.num_dropped
    annotations = []
    for mask, label, crowd, full in zip(
        scene.masks, scene.labels, scene.iscrowd, scene.full_areas, strict=True
    ):
        area = int(mask.sum())
        annotations.append(
            {
                "label": label,
                "segmentation": mask_to_rle(mask),
                "area": area,
                "bbox": mask_to_bbox(mask),
                "iscrowd": int(crowd),
            }
        )
        if crowd:
            stats["crowd"] += 1
            continue
        stats["instances"] += 1
        stats[area_range(area)] += 1
        stats["occluded"] += int(area < full)
    return _EncodedImage(encode_jpeg(scene.image), height, width, annotations, stats)


@dataclass(frozen=True)
class CocoFiles:
    """Where a COCO-format dataset puts its splits, and the categories its files list.

    image_dir, ann_file: paths relative to the dataset root; ``{split}`` stands for the
        split name (train, val).
    categories: the files' ``categories`` list, dicts with id, name and supercategory.
    shape_ids: the category id of shape class ``i`` (``CATEGORIES[i]``), one per class.
    """

    image_dir: str
    ann_file: str
    categories: list[dict]
    shape_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        known = {c["id"] for c in self.categories}
        if len(self.shape_ids) != len(CATEGORIES) or not set(self.shape_ids) <= known:
            raise ValueError(
                f"CocoFiles: shape_ids must give one id of 'categories' to each of the "
                f"{len(CATEGORIES)} shape classes, got {self.shape_ids}"
            )


# The default layout: the shape categories themselves.
COCO_FILES = CocoFiles(
    image_dir="images/{split}",
    ann_file="annotations/instances_{split}.json",
    categories=CATEGORIES,
    shape_ids=tuple(c["id"] for c in CATEGORIES),
)


def _coco_annotation(ann_id: int, image_id: int, encoded: dict, shape_ids: tuple) -> dict:
    """A COCO annotation from an encoded one: its label becomes ``shape_ids[label]``."""
    fields = {key: value for key, value in encoded.items() if key != "label"}
    category_id = shape_ids[encoded["label"]]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, **fields}


def write_coco_split(
    root: Path,
    split: str,
    num: int,
    seed: int,
    first_image_id: int,
    first_ann_id: int,
    imap: Callable[..., Iterator[_EncodedImage]] = map,
    files: CocoFiles = COCO_FILES,
) -> dict:
    """Render a split into ``root / files.image_dir`` and ``root / files.ann_file``.

    imap: ``map`` or an ordered ``Pool.imap``; the output does not depend on which.
    Returns the split's statistics (the ``stats`` of the file's ``info``).
    """
    image_dir = root / files.image_dir.format(split=split)
    image_dir.mkdir(parents=True)
    images, annotations, stats = [], [], _empty_stats()
    ann_id = first_ann_id
    jobs = [(split, index, seed) for index in range(num)]
    for index, encoded in enumerate(imap(_encode_image, jobs)):
        image_id = first_image_id + index
        file_name = f"{image_id:012d}.jpg"
        (image_dir / file_name).write_bytes(encoded.jpeg)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": encoded.height,
                "width": encoded.width,
                "license": 1,
            }
        )
        for ann in encoded.annotations:
            annotations.append(_coco_annotation(ann_id, image_id, ann, files.shape_ids))
            ann_id += 1
        for key, value in encoded.stats.items():
            stats[key] += value
    info = {
        "description": f"PointINS synthetic shapes ({split})",
        "version": str(GENERATOR_VERSION),
        "year": 2024,
        "contributor": "datamodules.synthetic",
        "url": "",
        "date_created": "2024-01-01",
        "seed": seed,
        "split": split,
        "stats": stats,
    }
    licenses = [
        {"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}
    ]
    coco = {
        "info": info,
        "licenses": licenses,
        "images": images,
        "annotations": annotations,
        "categories": files.categories,
    }
    ann_path = root / files.ann_file.format(split=split)
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    with open(ann_path, "w") as f:
        json.dump(coco, f, separators=(",", ":"))
    return stats


def dataset_stats(root: str | Path) -> dict[str, dict]:
    """Per split of a COCO-format layout, keyed by its annotation file's name without
    ``instances_`` (train, val; train2017, val2017): images, empty images, instances per area
    range, crowd, occluded, dropped."""
    out = {}
    for path in sorted((Path(root) / "annotations").glob("instances_*.json")):
        out[path.stem.removeprefix("instances_")] = json.loads(path.read_text())["info"]["stats"]
    return out
