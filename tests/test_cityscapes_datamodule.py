"""Cityscapes reading: instances from id maps, groups, label ids, layout errors, recipes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import labels as cs_labels
from cityscapesscripts.helpers.labels import name2label
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from PIL import Image

import train as train_entry
from datamodules.cityscapes import (
    CityscapesDataModule,
    CityscapesInstanceDataset,
    DatasetError,
    instances_from_id_map,
)
from datamodules.collate import Batch

H, W = 32, 48
PERSON, CAR, CARAVAN = (name2label[n].id for n in ("person", "car", "caravan"))
ROAD, UNLABELED = name2label["road"].id, name2label["unlabeled"].id


def id_map_a() -> np.ndarray:
    """Two people, a car, a group of people, a caravan (not evaluated), road and void."""
    ids = np.full((H, W), ROAD, np.uint16)
    ids[:4] = UNLABELED
    ids[5:15, 2:8] = PERSON * 1000  # person k = 0
    ids[5:15, 10:13] = PERSON * 1000 + 1
    ids[20:30, 20:40] = CAR * 1000 + 3  # k need not be contiguous
    ids[6:12, 30:45] = PERSON  # a group of people: never a target
    ids[25:30, 2:10] = CARAVAN * 1000  # hasInstances but ignoreInEval: not a class here
    return ids


def id_map_empty() -> np.ndarray:
    """Only a group and stuff: no thing instance."""
    ids = np.full((H, W), ROAD, np.uint16)
    ids[10:20, 10:20] = CAR
    return ids


def write_image(root: Path, split: str, city: str, frame: int, ids: np.ndarray | None) -> str:
    """The image (and, with ``ids``, its instance-id PNG and polygons) of one frame."""
    core = f"{city}_000000_{frame:06d}"
    image_dir = root / "leftImg8bit" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(frame)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
        image_dir / f"{core}_leftImg8bit.png"
    )
    if ids is not None:
        gt_dir = root / "gtFine" / split / city
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ids).save(gt_dir / f"{core}_gtFine_instanceIds.png")
        names = {label.id: label.name for label in cs_labels}
        objects = [
            {"label": names[int(i) // 1000] if i >= 1000 else names[int(i)] + "group",
             "polygon": [[0, 0], [1, 0], [1, 1]]}
            for i in np.unique(ids) if i >= 1000 or name2label[names[int(i)]].hasInstances
        ]  # fmt: skip
        polygons = {"imgHeight": H, "imgWidth": W, "objects": objects}
        (gt_dir / f"{core}_gtFine_polygons.json").write_text(json.dumps(polygons))
    return core


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """train: aachen (2 images, one without things), bremen (1); val: 2; test: 1."""
    root = tmp_path / "cityscapes"
    write_image(root, "train", "aachen", 1, id_map_a())
    write_image(root, "train", "aachen", 2, id_map_empty())
    write_image(root, "train", "bremen", 1, id_map_a()[::-1].copy())
    write_image(root, "val", "lindau", 1, id_map_a())
    write_image(root, "val", "lindau", 2, id_map_empty())
    write_image(root, "test", "berlin", 1, None)
    return root


def datamodule(root: Path, **kwargs) -> CityscapesDataModule:
    options = {"train_scales": [H], "test_scale": H, "max_size": 1000, "batch_size": 2}
    return CityscapesDataModule(str(root), num_workers=0, pin_memory=False, **{**options, **kwargs})


# --- classes and instances -------------------------------------------------------------


def test_classes_are_cityscapes_thing_labels(root: Path) -> None:
    dm = datamodule(root)
    expected = [label for label in cs_labels if label.hasInstances and not label.ignoreInEval]
    assert dm.class_names == [label.name for label in expected]
    assert dm.class_names == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"
    ]  # fmt: skip
    assert dm.label_to_cat_id == [label.id for label in expected]


def test_groups_and_other_classes_never_become_targets() -> None:
    ids = id_map_a()
    label_ids = [PERSON, CAR]
    masks, labels = instances_from_id_map(ids.astype(np.int32), label_ids)
    assert labels.tolist() == [0, 0, 1]
    assert [int(ids[m][0]) for m in masks] == [PERSON * 1000, PERSON * 1000 + 1, CAR * 1000 + 3]
    assert np.array_equal(masks[0], ids == PERSON * 1000)
    covered = masks.any(axis=0)
    assert not covered[ids == PERSON].any() and not covered[ids == CARAVAN * 1000].any()
    assert instances_from_id_map(id_map_empty().astype(np.int32), label_ids)[0].shape == (0, H, W)


def test_targets_have_the_coco_structure(root: Path) -> None:
    ds = CityscapesInstanceDataset(str(root), "val")
    image, target, meta = ds[0]
    assert image.shape == (3, H, W) and image.dtype == torch.uint8
    assert meta == {"image_id": 0, "orig_size": (H, W), "instances_dropped": 0}
    assert target["labels"].tolist() == [0, 0, 2]  # person, person, car
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (3, H, W)
    assert target["boxes"].tolist() == [[2, 5, 8, 15], [10, 5, 13, 15], [20, 20, 40, 30]]
    assert target["boxes"].format.value == "XYXY"


def test_label_ids_round_trip(root: Path) -> None:
    """label -> Cityscapes id -> label, and every target mask is one instance of its class."""
    dm = datamodule(root)
    cat_to_label = {c: label for label, c in enumerate(dm.label_to_cat_id)}
    assert [cat_to_label[c] for c in dm.label_to_cat_id] == list(range(8))
    ds = CityscapesInstanceDataset(str(root), "train")
    for index in range(len(ds)):
        _, target, meta = ds[index]
        ids = np.array(Image.open(ds.images[meta["image_id"]].instance_file), np.int64)
        for mask, label in zip(target["masks"].bool().numpy(), target["labels"], strict=True):
            (instance_id,) = np.unique(ids[mask])
            assert instance_id // 1000 == dm.label_to_cat_id[int(label)]
            assert np.array_equal(ids == instance_id, mask)


# --- splits, empty images, transforms ----------------------------------------------------


def test_empty_images_dropped_in_train_kept_in_val(root: Path, caplog) -> None:
    dm = datamodule(root)
    with caplog.at_level(logging.INFO, logger="datamodules.cityscapes"):
        dm.setup("fit")
    train_files = [Path(img.file_name).name for img in dm.train_dataset.images.values()]
    assert train_files == [f"{c}_000000_000001_leftImg8bit.png" for c in ("aachen", "bremen")]
    assert "dropped 1 of 3 images" in caplog.text
    assert len(dm.val_dataset) == 2  # the one without things is evaluated
    kept = datamodule(root, train_keep_empty=True)
    kept.setup("fit")
    assert len(kept.train_dataset) == 3


def test_batches_go_through_the_shared_pipeline(root: Path) -> None:
    dm = datamodule(root, train_scales=[64], test_scale=48)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, Batch) and batch.images.shape[0] == 2
    assert all(min(size) == 64 for size in batch.image_sizes)  # resized by the COCO transforms
    assert batch.images.dtype == torch.float32  # normalised
    val = next(iter(dm.val_dataloader()))
    assert val.image_sizes == [(48, 72)] and val.orig_sizes == [(H, W)]


def test_test_split_has_images_and_no_targets(root: Path) -> None:
    dm = datamodule(root, split="test")
    dm.setup("validate")
    _, target, _ = dm.val_dataset[0]
    assert target["labels"].numel() == 0 and target["masks"].shape == (0, H, W)
    assert dm.build_evaluator(root / "run").has_ground_truth is False


def test_paper_scales_are_the_defaults(root: Path, compose_cfg) -> None:
    dm = CityscapesDataModule(str(root))
    assert dm.train_scales == list(range(800, 1025, 32)) and dm.test_scale == 1024
    assert dm.max_size == 2048
    cfg = compose_cfg(["data=cityscapes"])
    assert list(cfg.data.train_scales) == dm.train_scales and cfg.data.test_scale == 1024
    assert cfg.monitor == "cityscapes/AP" and cfg.data.keep_predictions is False
    assert compose_cfg(["data=cityscapes", "eval.keep_predictions=true"]).data.keep_predictions


# --- errors -------------------------------------------------------------------------------


def test_missing_folder_names_it(root: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"image folder not found: .*leftImg8bit/val;.*data\.root"
    ):
        datamodule(root.parent / "elsewhere").setup("validate")
    with pytest.raises(ValueError, match=r"data\.split='nowhere'"):
        datamodule(root, split="nowhere")
    (root / "gtFine" / "val").rename(root / "gtFine" / "val_moved")
    with pytest.raises(DatasetError, match=r"annotation folder not found: .*gtFine/val"):
        datamodule(root).setup("validate")


def test_city_with_images_but_no_annotations_names_it(root: Path) -> None:
    write_image(root, "val", "ulm", 1, None)
    with pytest.raises(DatasetError, match=r"city 'ulm' has 1 images .* no annotation folder"):
        datamodule(root).setup("validate")
    (root / "gtFine" / "val" / "ulm").mkdir()
    with pytest.raises(DatasetError, match=r"ulm_000000_000001_gtFine_instanceIds\.png"):
        datamodule(root).setup("validate")


def test_unreadable_png_names_the_file(root: Path) -> None:
    gt = root / "gtFine" / "val" / "lindau" / "lindau_000000_000001_gtFine_instanceIds.png"
    gt.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=rf"cannot read {gt}"):
        datamodule(root).setup("validate")  # when the split is indexed, before training
    image = root / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000002_leftImg8bit.png"
    valid = image.read_bytes()
    write_image(root, "val", "lindau", 1, id_map_a())
    image.write_bytes(valid[:200])  # a readable header, a truncated body
    dm = datamodule(root)
    dm.setup("validate")
    with pytest.raises(DatasetError, match=rf"cannot read image {image}"):
        dm.val_dataset[1]


# --- the paper's recipe runs ----------------------------------------------------------------


@pytest.mark.slow  # ~10-20 s on 2 CPU cores: the paper-sized R50 model
def test_cityscapes_recipe_runs_one_step(root: Path, compose_cfg, tmp_path: Path) -> None:
    """experiment=cityscapes_fcos_r50 (R50, FPN 256, batch 1/device) end to end, tiny images."""
    cfg = compose_cfg(
        [
            "experiment=cityscapes_fcos_r50",
            f"data.root={root}",
            "trainer.fast_dev_run=true",
            "data.train_scales=[64]",
            "data.test_scale=64",
            "data.num_workers=0",
            "data.pin_memory=false",
            "trainer.accelerator=cpu",
            "logger=csv",
            "callbacks.progress_bar.refresh_rate=0",
        ]
    )
    assert cfg.model.backbone.name == "resnet50" and cfg.model.neck.out_channels == 256
    assert cfg.optim.optimizer.lr == 5e-4 and list(cfg.optim.scheduler.milestones) == [18000]
    assert cfg.trainer.max_steps == 24000
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        del cfg.hydra
    metrics = train_entry.train(cfg)
    assert "cityscapes/AP" in metrics
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"cityscapes/AP", "cityscapes/AP50", "cityscapes/AP/car"} <= saved.keys()
    assert not (tmp_path / "run" / "cityscapes_predictions").exists()
