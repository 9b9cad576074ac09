"""COCO-format reading: masks, crowds, empty images, category mapping, validation, datamodule."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from datamodules.coco import CocoDataModule, CocoInstanceDataset, DatasetError
from datamodules.collate import Batch, Collate
from datamodules.preview import class_color, render_preview
from datamodules.preview import main as preview_main
from datamodules.transforms import build_train_transforms

H, W = 24, 32
# Non-contiguous ids listed out of order: sorted ids 3, 7, 42 → labels 0, 1, 2.
CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 42, "name": "bird"}]

# Uncompressed RLE written by hand: column-major runs 0×(24+2), 1×5, 0×rest → rows 2..6 of column 1.
HAND_RLE = {"size": [H, W], "counts": [H + 2, 5, H * W - H - 7]}
HAND_RLE_PIXELS = (slice(2, 7), slice(1, 2))
# The same runs in COCO's compressed string form (LEB128-like, differences of runs).
HAND_RLE_COMPRESSED = {"size": [H, W], "counts": "j05Qg0"}


def annotation(
    ann_id: int, image_id: int, cat_id: int, bbox: list, segm: Any, **extra: Any
) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat_id,
        "bbox": bbox,
        "segmentation": segm,
        "area": float(bbox[2] * bbox[3]),
        "iscrowd": 0,
        **extra,
    }


def coco_dict() -> dict[str, Any]:
    """Five images: polygons (1), compressed RLE (2), uncompressed RLE + crowd (3), none (4, 5)."""
    images = [{"id": i, "file_name": f"img{i}.png", "height": H, "width": W} for i in range(1, 6)]
    annotations = [
        annotation(1, 1, 7, [2, 3, 8, 5], [[2, 3, 10, 3, 10, 8, 2, 8]]),
        annotation(2, 1, 42, [12, 10, 10, 10], [[12, 10, 22, 10, 22, 20, 12, 20]]),
        annotation(3, 2, 3, [1, 2, 1, 5], HAND_RLE_COMPRESSED),
        annotation(4, 3, 42, [1, 2, 1, 5], HAND_RLE),
        annotation(5, 3, 7, [10, 0, 20, 20], HAND_RLE, iscrowd=1),
        annotation(6, 4, 7, [10, 0, 20, 20], HAND_RLE, iscrowd=1),  # image 4: only a crowd
    ]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def write_dataset(root: Path, data: dict[str, Any], name: str = "ann.json") -> Path:
    """Write ``data`` as ``root/name`` and a grey PNG for each of its images under ``root/img``."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for img in data.get("images", []):
        if "file_name" not in img:
            continue
        Image.new("RGB", (img["width"], img["height"]), (128, 128, 128)).save(
            root / "img" / img["file_name"]
        )
    path = root / name
    path.write_text(json.dumps(data))
    return path


def dataset(
    tmp_path: Path, data: dict[str, Any] | None = None, **kwargs: Any
) -> CocoInstanceDataset:
    ann_file = write_dataset(tmp_path, coco_dict() if data is None else data)
    return CocoInstanceDataset(str(ann_file), str(tmp_path / "img"), **kwargs)


def item_by_id(ds: CocoInstanceDataset, image_id: int) -> tuple:
    return next(ds[i] for i in range(len(ds)) if ds[i][2]["image_id"] == image_id)


def datamodule(root: Path, **kwargs: Any) -> CocoDataModule:
    options = {
        "train_ann": "ann.json",
        "train_img_dir": "img",
        "val_ann": "ann.json",
        "val_img_dir": "img",
        "train_scales": [H],
        "max_size": 1000,
        "test_scale": H,
        "num_workers": 0,
        "pin_memory": False,
        "batch_size": 2,
        **kwargs,
    }
    return CocoDataModule(root=str(root), **options)


# --- masks ---------------------------------------------------------------------------------


def test_polygon_masks_decode_to_expected_pixels(tmp_path: Path) -> None:
    _, target, meta = item_by_id(dataset(tmp_path), 1)
    assert meta == {"image_id": 1, "orig_size": (H, W), "instances_dropped": 0}
    expected = torch.zeros((2, H, W), dtype=torch.uint8)
    expected[0, 3:8, 2:10] = 1  # polygon corners on pixel edges: rows 3..7, columns 2..9
    expected[1, 10:20, 12:22] = 1
    assert torch.equal(target["masks"], expected)
    assert target["boxes"].tolist() == [[2, 3, 10, 8], [12, 10, 22, 20]]  # xywh → xyxy


@pytest.mark.parametrize("image_id", [2, 3], ids=["compressed_rle", "uncompressed_rle"])
def test_rle_masks_decode_to_expected_pixels(tmp_path: Path, image_id: int) -> None:
    _, target, _ = item_by_id(dataset(tmp_path), image_id)
    expected = torch.zeros((1, H, W), dtype=torch.uint8)
    expected[(0, *HAND_RLE_PIXELS)] = 1
    assert torch.equal(target["masks"], expected)


# --- crowds, empty images, categories --------------------------------------------------------


def test_crowd_annotations_are_not_targets(tmp_path: Path) -> None:
    ds = dataset(tmp_path, keep_empty=True)
    _, target, _ = item_by_id(ds, 3)  # one normal instance (bird) and one crowd (cat)
    assert target["labels"].tolist() == [2]
    _, crowd_only, _ = item_by_id(ds, 4)
    assert len(crowd_only["labels"]) == 0 and crowd_only["masks"].shape == (0, H, W)


def test_empty_images_kept_in_val_dropped_in_train_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_dataset(tmp_path, coco_dict())
    dm = datamodule(tmp_path)
    with caplog.at_level(logging.INFO, logger="datamodules.coco"):
        dm.setup("fit")
    ids = [dm.train_dataset[i][2]["image_id"] for i in range(len(dm.train_dataset))]
    assert sorted(ids) == [1, 2, 3]  # image 4 (only a crowd) and 5 (nothing) dropped
    assert len(dm.val_dataset) == 5
    assert "dropped 2 of 5 images" in caplog.text and "ann.json" in caplog.text

    kept = datamodule(tmp_path, train_keep_empty=True)
    kept.setup("fit")
    assert len(kept.train_dataset) == 5


def test_noncontiguous_category_ids_round_trip(tmp_path: Path) -> None:
    data = coco_dict()
    write_dataset(tmp_path, data)
    dm = datamodule(tmp_path)
    assert dm.num_classes == 3  # available before setup
    assert dm.class_names == ["dog", "cat", "bird"]
    assert dm.label_to_cat_id == [3, 7, 42]
    dm.setup("fit")
    ds = dm.val_dataset
    ds.transforms = None
    for ann in data["annotations"]:
        if ann["iscrowd"]:
            continue
        _, target, _ = item_by_id(ds, ann["image_id"])
        labels = {
            tuple(b): int(lab)
            for b, lab in zip(target["boxes"].tolist(), target["labels"], strict=True)
        }
        x, y, w, h = ann["bbox"]
        assert dm.label_to_cat_id[labels[(x, y, x + w, y + h)]] == ann["category_id"]


def test_degenerate_annotations_dropped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = coco_dict()
    data["annotations"] += [
        annotation(10, 1, 7, [5, 5, 0.5, 10], [[5, 5, 5.5, 5, 5.5, 15, 5, 15]]),  # 0.5 px wide
        annotation(11, 1, 7, [40, 5, 10, 10], [[40, 5, 50, 5, 50, 15, 40, 15]]),  # right of image
        annotation(12, 2, 3, [1, 1, 4, 4], [[1, 1, 5, 1]]),  # polygon with two points
        annotation(13, 2, 3, [1, 1, 4, 4], {"size": [H, W], "counts": [H * W]}),  # empty RLE
    ]
    with caplog.at_level(logging.WARNING, logger="datamodules.coco"):
        ds = dataset(tmp_path, data)
    assert "dropped 4 degenerate annotations" in caplog.text and "ann.json" in caplog.text
    assert item_by_id(ds, 1)[1]["labels"].tolist() == [1, 2]
    assert item_by_id(ds, 2)[1]["labels"].tolist() == [0]


def test_polygon_rasterising_to_nothing_dropped_at_load_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = coco_dict()
    speck = [[5.1, 5.1, 5.3, 5.1, 5.2, 5.3]]  # covers no pixel, though its bbox is 4x4
    data["annotations"].append(annotation(20, 1, 3, [4, 4, 4, 4], speck))
    ds = dataset(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="datamodules.coco"):
        _, target, _ = item_by_id(ds, 1)
    assert target["labels"].tolist() == [1, 2] and target["masks"].shape[0] == 2
    assert "[20]" in caplog.text and "ann.json" in caplog.text


def test_instances_the_augmentation_removes_are_counted(tmp_path: Path) -> None:
    """Resized to half, the 1-px-wide instances of images 2 and 3 have boxes under 1 px:
    the transforms drop them, each sample says how many, and the batch sums them."""
    ds = dataset(tmp_path, transforms=build_train_transforms([H // 2], 1000, hflip_prob=0.0))
    dropped = {}
    for i in range(len(ds)):
        _, target, meta = ds[i]
        dropped[meta["image_id"]] = meta["instances_dropped"]
        if meta["image_id"] in (2, 3):
            assert len(target["labels"]) == 0
    assert dropped == {1: 0, 2: 1, 3: 1, 4: 0, 5: 0}
    assert Collate()([ds[i] for i in range(len(ds))]).instances_dropped == 2


def test_box_clipped_to_image(tmp_path: Path) -> None:
    data = coco_dict()
    data["annotations"][1]["bbox"] = [12, 10, 30, 30]
    _, target, _ = item_by_id(dataset(tmp_path, data), 1)
    assert target["boxes"][1].tolist() == [12, 10, W, H]


# --- validation ------------------------------------------------------------------------------


def _delete(*path: Any) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _set(value: Any, *path: Any) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


MALFORMED = {
    "no_images": (_delete("images"), "key(s) ['images']"),
    "no_categories": (_delete("categories"), "key(s) ['categories']"),
    "ann_without_bbox": (_delete("annotations", 0, "bbox"), "bbox"),
    "ann_without_category_id": (_delete("annotations", 0, "category_id"), "category_id"),
    "ann_without_image_id": (_delete("annotations", 0, "image_id"), "image_id"),
    "ann_without_segmentation": (_delete("annotations", 1, "segmentation"), "segmentation"),
    "bbox_three_numbers": (_set([1, 2, 3], "annotations", 0, "bbox"), "bbox"),
    "bbox_not_numbers": (_set([1, 2, "3", 4], "annotations", 0, "bbox"), "bbox"),
    "unknown_category_id": (_set(5, "annotations", 2, "category_id"), "category_id"),
    "unknown_image_id": (_set(99, "annotations", 3, "image_id"), "image_id"),
    "rle_wrong_size": (
        _set({"size": [2, 2], "counts": [4]}, "annotations", 3, "segmentation"),
        "segmentation",
    ),
    "image_without_file_name": (_delete("images", 0, "file_name"), "file_name"),
    "category_without_name": (_delete("categories", 1, "name"), "name"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_file_raises_naming_file_and_field(tmp_path: Path, case: str) -> None:
    mutate, field = MALFORMED[case]
    data = copy.deepcopy(coco_dict())
    mutate(data)
    with pytest.raises(DatasetError) as err:
        dataset(tmp_path, data)
    assert "ann.json" in str(err.value) and field in str(err.value)


def test_image_info_file_is_predicted_and_cannot_train(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file without "annotations" (COCO's image_info_test-dev2017.json) lists images to
    predict: validation reads all of them without targets; training stops, naming it."""
    info = {k: v for k, v in coco_dict().items() if k != "annotations"}
    write_dataset(tmp_path, info)
    with caplog.at_level(logging.INFO, logger="datamodules.coco"):
        dm = datamodule(tmp_path)
        dm.setup("validate")
    assert "no 'annotations'" in caplog.text and "5 images are predicted" in caplog.text
    assert sorted(dm.val_dataset[i][2]["image_id"] for i in range(5)) == [1, 2, 3, 4, 5]
    assert all(len(dm.val_dataset[i][1]["labels"]) == 0 for i in range(5))
    assert dm.class_names == ["dog", "cat", "bird"]
    with pytest.raises(DatasetError, match=r"ann\.json: no training images: 5 listed"):
        datamodule(tmp_path).setup("fit")


def test_invalid_json_raises(tmp_path: Path) -> None:
    write_dataset(tmp_path, coco_dict()).write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"ann\.json.*JSON"):
        CocoInstanceDataset(str(tmp_path / "ann.json"), str(tmp_path / "img"))


def test_missing_annotation_file_names_path_and_options(tmp_path: Path) -> None:
    write_dataset(tmp_path, coco_dict())
    dm = datamodule(tmp_path, train_ann="annotations/nope.json")
    with pytest.raises(DatasetError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert str(tmp_path / "annotations" / "nope.json") in message
    assert "data.train_ann" in message and "data.root" in message
    with pytest.raises(DatasetError, match="data.val_ann"):
        datamodule(tmp_path, val_ann="/elsewhere/val.json").setup("validate")


def test_missing_image_folder_names_path_and_option(tmp_path: Path) -> None:
    write_dataset(tmp_path, coco_dict())
    with pytest.raises(DatasetError, match=r"val2017.*data\.val_img_dir"):
        datamodule(tmp_path, val_img_dir="val2017").setup("validate")


def test_missing_image_file_raises_at_construction(tmp_path: Path) -> None:
    write_dataset(tmp_path, coco_dict())
    (tmp_path / "img" / "img3.png").unlink()
    with pytest.raises(DatasetError) as err:
        CocoInstanceDataset(str(tmp_path / "ann.json"), str(tmp_path / "img"))
    assert str(tmp_path / "img" / "img3.png") in str(err.value) and "ann.json" in str(err.value)


def test_image_size_mismatch_raises_at_load(tmp_path: Path) -> None:
    ds = dataset(tmp_path)
    Image.new("RGB", (W + 1, H), (0, 0, 0)).save(tmp_path / "img" / "img1.png")
    with pytest.raises(DatasetError, match=r"img1\.png.*height=24, width=32"):
        item_by_id(ds, 1)


def test_train_and_val_categories_must_agree(tmp_path: Path) -> None:
    write_dataset(tmp_path, coco_dict())
    other = coco_dict()
    other["categories"] = CATEGORIES[:2] + [{"id": 42, "name": "parrot"}]
    write_dataset(tmp_path, other, name="val.json")
    with pytest.raises(DatasetError, match=r"ann\.json.*val\.json"):
        datamodule(tmp_path, val_ann="val.json").setup("fit")


# --- datamodule and preview ------------------------------------------------------------------


def test_train_dataloader_yields_aligned_batches(tmp_path: Path) -> None:
    write_dataset(tmp_path, coco_dict())
    dm = datamodule(tmp_path, train_scales=[48], max_size=200, size_divisibility=32)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b) for b in batches) == 3 and all(isinstance(b, Batch) for b in batches)
    for batch in batches:
        assert batch.images.shape[-2:] == (64, 64)  # 48x64 padded to multiples of 32
        for (h, w), target in zip(batch.image_sizes, batch.targets, strict=True):
            assert (h, w) == (48, 64)
            assert target["masks"].shape[-2:] == (h, w)
            assert target["labels"].max() < dm.num_classes
    val = next(iter(dm.val_dataloader()))
    assert val.image_ids == [1] and val.orig_sizes == [(H, W)]
    assert dm.val_ann_file == str(tmp_path / "ann.json")


def test_render_preview_draws_masks_in_class_colours(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 96}],
        "annotations": [annotation(1, 1, 7, [30, 20, 60, 40], [[30, 20, 90, 20, 90, 60, 30, 60]])],
        "categories": CATEGORIES,
    }
    write_dataset(tmp_path, data)
    dm = datamodule(tmp_path, train_scales=[64], test_scale=64, hflip_prob=0.0)
    dm.setup("fit")
    grid = render_preview(dm, num=1, seed=0)  # one tile: the 64x96 grey image itself
    assert grid.dtype == torch.uint8 and tuple(grid.shape) == (3, 64, 96)
    assert grid[:, 5, 5].tolist() == [128, 128, 128]  # de-normalised background
    cat = [round(0.5 * 128 + 0.5 * c) for c in class_color(1)]  # "cat" at alpha 0.5 over grey
    assert all(abs(a - b) <= 1 for a, b in zip(grid[:, 50, 80].tolist(), cat, strict=True))
    assert torch.equal(render_preview(dm, num=1, seed=0), grid)  # reproducible


def test_render_preview_grid_holds_every_sample(tmp_path: Path) -> None:
    write_dataset(tmp_path, coco_dict())
    dm = datamodule(tmp_path)
    dm.setup("fit")
    grid = render_preview(dm, num=16, seed=0)  # 3 training images of 24x32 → 2x2 grid
    assert tuple(grid.shape) == (3, 8 + 2 * (H + 8), 8 + 2 * (W + 8))


def test_preview_command_writes_png(tmp_path: Path, compose_cfg: Callable) -> None:
    """``python -m datamodules.preview data=shapes`` composes, generates and writes a PNG."""
    overrides = [
        "data=shapes",
        "data.num_train=3",
        "data.num_val=1",
        "data.num_workers=0",
        "data.train_scales=[64]",
        "data.test_scale=64",
        f"paths.data_dir={tmp_path}",
        "preview.num=2",
        f"preview.out={tmp_path / 'preview.png'}",
    ]
    preview_main.__wrapped__(compose_cfg(overrides, config_name="preview"))
    image = Image.open(tmp_path / "preview.png")
    assert image.mode == "RGB" and image.height >= 64
