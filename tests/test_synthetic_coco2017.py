"""The embedded scenes in the COCO 2017 layout: COCO's folders and 80 categories, the same
scenes as the default layout."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from pycocotools.coco import COCO

from datamodules.coco import CocoDataModule, CocoInstanceDataset
from datamodules.coco_writer import CocoFiles
from datamodules.scenes import CATEGORIES
from datamodules.synthetic import generate_shapes
from datamodules.synthetic import main as synthetic_main
from datamodules.synthetic_coco2017 import (
    COCO2017_CATEGORIES,
    SHAPE_CATEGORY_IDS,
    coco2017_categories,
)

# pycocotools' decode trips a numpy-2 DeprecationWarning on every annToMask; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

NUM_TRAIN, NUM_VAL = 6, 3  # train image 3 is empty, train image 5 has a crowd region
UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
# default layout's file -> COCO 2017 layout's file, per split
SPLIT_FILES = {
    "train": ("images/train", "annotations/instances_train.json", "train2017",
              "annotations/instances_train2017.json"),
    "val": ("images/val", "annotations/instances_val.json", "val2017",
            "annotations/instances_val2017.json"),
}  # fmt: skip


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("shapes")
    coco = generate_shapes(base / "coco", NUM_TRAIN, NUM_VAL, 0, 0)
    coco2017 = generate_shapes(base / "coco2017", NUM_TRAIN, NUM_VAL, 0, 0, layout="coco2017")
    return coco, coco2017


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_folder_layout_and_marker(roots) -> None:
    _, root = roots
    assert sorted(p.name for p in root.iterdir()) == [
        ".complete", "annotations", "train2017", "val2017"
    ]  # fmt: skip
    assert sorted(p.name for p in (root / "annotations").iterdir()) == [
        "instances_train2017.json", "instances_val2017.json"
    ]  # fmt: skip
    assert len(list((root / "train2017").glob("*.jpg"))) == NUM_TRAIN
    assert len(list((root / "val2017").glob("*.jpg"))) == NUM_VAL
    marker = _load(root / ".complete")
    assert marker["layout"] == "coco2017"
    assert (marker["num_train"], marker["num_val"], marker["seed"]) == (NUM_TRAIN, NUM_VAL, 0)
    assert generate_shapes(root, NUM_TRAIN, NUM_VAL, 0, 0, layout="coco2017") == root  # reuse
    with pytest.raises(FileExistsError, match="delete"):
        generate_shapes(root, NUM_TRAIN, NUM_VAL, 0, 0)  # the default layout's marker differs


def test_categories_are_coco2017s() -> None:
    ids = [c["id"] for c in COCO2017_CATEGORIES]
    assert len(ids) == len(set(ids)) == 80
    assert ids[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]
    assert ids[-1] == 90
    assert ids == sorted(ids)
    assert not set(UNUSED_IDS) & set(ids)
    assert set(ids) | set(UNUSED_IDS) == set(range(1, 91))
    by_id = {c["id"]: c for c in COCO2017_CATEGORIES}
    assert by_id[1] == {"id": 1, "name": "person", "supercategory": "person"}
    assert by_id[13]["name"] == "stop sign"
    assert by_id[67] == {"id": 67, "name": "dining table", "supercategory": "furniture"}
    assert by_id[90] == {"id": 90, "name": "toothbrush", "supercategory": "indoor"}
    assert len({c["supercategory"] for c in COCO2017_CATEGORIES}) == 12
    assert len({c["name"] for c in COCO2017_CATEGORIES}) == 80


def test_categories_need_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("coco2017_categories opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert coco2017_categories() == COCO2017_CATEGORIES


def test_shape_mapping() -> None:
    ids = {c["id"] for c in COCO2017_CATEGORIES}
    assert len(SHAPE_CATEGORY_IDS) == len(set(SHAPE_CATEGORY_IDS)) == len(CATEGORIES)
    assert set(SHAPE_CATEGORY_IDS) <= ids
    assert max(SHAPE_CATEGORY_IDS) > 80  # ids past the number of classes are exercised
    with pytest.raises(ValueError, match="shape_ids"):
        CocoFiles("{split}2017", "a/{split}.json", COCO2017_CATEGORIES, (1, 2, 3))
    with pytest.raises(ValueError, match="shape_ids"):
        CocoFiles("{split}2017", "a/{split}.json", COCO2017_CATEGORIES, (12,) * len(CATEGORIES))


def test_pycocotools_reads_both_files(roots) -> None:
    _, root = roots
    for split, (_, _, image_dir, ann_file) in SPLIT_FILES.items():
        coco = COCO(str(root / ann_file))
        assert len(coco.getCatIds()) == 80, split
        assert coco.dataset["categories"] == COCO2017_CATEGORIES
        for img in coco.dataset["images"]:
            with Image.open(root / image_dir / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"])
        for ann in coco.dataset["annotations"]:
            assert coco.annToMask(ann).sum() == ann["area"]
        used = {a["category_id"] for a in coco.dataset["annotations"]}
        assert used and used <= set(SHAPE_CATEGORY_IDS), split


def test_same_scenes_as_the_default_layout(roots) -> None:
    """Byte-identical JPEGs; annotations equal but for the mapped category ids."""
    coco_root, root = roots
    to_coco2017 = {c["id"]: i for c, i in zip(CATEGORIES, SHAPE_CATEGORY_IDS, strict=True)}
    for default_dir, default_ann, image_dir, ann_file in SPLIT_FILES.values():
        a, b = _load(coco_root / default_ann), _load(root / ann_file)
        assert a["images"] == b["images"]
        for img in a["images"]:
            name = img["file_name"]
            assert (coco_root / default_dir / name).read_bytes() == (
                root / image_dir / name
            ).read_bytes()
        assert len(a["annotations"]) == len(b["annotations"]) > 0
        for ann_a, ann_b in zip(a["annotations"], b["annotations"], strict=True):
            assert ann_b["category_id"] == to_coco2017[ann_a["category_id"]]
            assert {**ann_a, "category_id": None} == {**ann_b, "category_id": None}
    with (
        Image.open(coco_root / "images/train/000000000001.jpg") as im_a,
        Image.open(root / "train2017/000000000001.jpg") as im_b,
    ):
        assert np.array_equal(np.asarray(im_a), np.asarray(im_b))


def test_datamodule_reads_it_with_the_paper_paths(roots) -> None:
    """The paper's data paths (``conf/data/coco.yaml``) find it: 80 classes as on COCO."""
    coco_root, root = roots
    conf = OmegaConf.load(Path(__file__).parents[1] / "conf" / "data" / "coco.yaml")
    paths = {key: conf[key] for key in ("train_ann", "train_img_dir", "val_ann", "val_img_dir")}
    dm = CocoDataModule(str(root), **paths, num_workers=0)
    assert dm.num_classes == 80
    assert dm.label_to_cat_id == [c["id"] for c in COCO2017_CATEGORIES]
    dm.setup("fit")
    default = CocoInstanceDataset(
        str(coco_root / "annotations/instances_val.json"), str(coco_root / "images/val")
    )
    ours = CocoInstanceDataset(dm.val_ann_file, dm.val_img_dir)
    shape_label = {dm.label_to_cat_id.index(i): s for s, i in enumerate(SHAPE_CATEGORY_IDS)}
    for index in range(NUM_VAL):
        image_a, target_a, _ = default[index]
        image_b, target_b, _ = ours[index]
        assert torch.equal(image_a, image_b)
        assert torch.equal(target_a["masks"], target_b["masks"])
        assert [shape_label[int(x)] for x in target_b["labels"]] == target_a["labels"].tolist()


def test_cli_writes_the_coco2017_layout(tmp_path: Path, capsys) -> None:
    synthetic_main(["--root", str(tmp_path / "c17"), "--num-train", "2", "--num-val", "1",
                    "--workers", "0", "--layout", "coco2017"])  # fmt: skip
    out = capsys.readouterr().out
    assert "COCO 2017 layout" in out and "80 COCO categories" in out
    assert "disc -> 1 person" in out and "frame -> 90 toothbrush" in out
    assert "train2017: 2 images" in out and "val2017" in out
    assert (tmp_path / "c17" / "annotations" / "instances_val2017.json").is_file()
    with pytest.raises(SystemExit):
        synthetic_main(["--root", str(tmp_path / "x"), "--layout", "coco2014"])
    with pytest.raises(ValueError, match="layout"):
        generate_shapes(tmp_path / "y", 1, 1, layout="coco2014")
