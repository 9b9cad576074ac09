"""The embedded scenes in the Cityscapes layout: the same scenes as the COCO layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from datamodules.cityscapes import CityscapesInstanceDataset
from datamodules.coco import CocoInstanceDataset
from datamodules.scenes import CATEGORIES, CROWD_AT, render_indexed
from datamodules.synthetic import generate_shapes
from datamodules.synthetic import main as synthetic_main
from datamodules.synthetic_cityscapes import (
    BACKGROUND_ID,
    SHAPE_LABEL_IDS,
    file_core,
    instance_id_map,
    outer_boundary,
)

NUM_TRAIN, NUM_VAL = 8, 6  # val image 5 has a crowd region (CROWD_AT)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("shapes")
    coco = generate_shapes(base / "coco", NUM_TRAIN, NUM_VAL, 0, 0)
    cityscapes = generate_shapes(base / "cs", NUM_TRAIN, NUM_VAL, 0, 0, layout="cityscapes")
    return coco, cityscapes


def test_layout_and_class_mapping(roots) -> None:
    _, root = roots
    for split, num in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        names = sorted(p.name for p in (root / "gtFine" / split / "shapes").iterdir())
        assert len(names) == 2 * num and names[0] == "shapes_000000_000000_gtFine_instanceIds.png"
        assert len(list((root / "leftImg8bit" / split / "shapes").iterdir())) == num
    assert SHAPE_LABEL_IDS == [24, 25, 26, 27, 28, 31, 32, 33]  # disc -> person, ..., bicycle
    assert len(CATEGORIES) == len(SHAPE_LABEL_IDS) == 8
    assert BACKGROUND_ID == 7  # road: evaluated, so false positives on background count


def test_same_scenes_as_the_coco_layout(roots) -> None:
    """Identical pixels, and the non-crowd instances with the mapped classes."""
    coco_root, cs_root = roots
    coco = CocoInstanceDataset(
        str(coco_root / "annotations" / "instances_val.json"), str(coco_root / "images" / "val")
    )
    cityscapes = CityscapesInstanceDataset(str(cs_root), "val")
    assert len(coco) == len(cityscapes) == NUM_VAL
    for index in range(NUM_VAL):
        image_a, target_a, _ = coco[index]
        image_b, target_b, _ = cityscapes[index]
        assert torch.equal(image_a, image_b)
        # COCO labels follow sorted category ids, which is the order of CATEGORIES
        a, b = _by_first_pixel(target_a["masks"]), _by_first_pixel(target_b["masks"])
        assert target_a["labels"][a].tolist() == target_b["labels"][b].tolist()
        assert torch.equal(target_a["masks"][a], target_b["masks"][b])
        assert torch.equal(target_a["boxes"][a], target_b["boxes"][b])


def _by_first_pixel(masks: torch.Tensor) -> list[int]:
    """Instance order by first pixel in raster order (the masks are disjoint)."""
    return sorted(range(len(masks)), key=lambda i: int(masks[i].flatten().nonzero()[0]))


def test_crowd_becomes_a_group_region(roots) -> None:
    _, root = roots
    scene = render_indexed("val", CROWD_AT, 0)
    (crowd,) = [i for i, c in enumerate(scene.iscrowd) if c]
    gt = root / "gtFine" / "val" / "shapes" / file_core(CROWD_AT)
    ids = np.array(Image.open(f"{gt}_gtFine_instanceIds.png"))
    assert np.array_equal(ids, instance_id_map(scene))
    assert (ids[scene.masks[crowd]] == SHAPE_LABEL_IDS[scene.labels[crowd]]).all()  # < 1000
    polygons = json.loads(Path(f"{gt}_gtFine_polygons.json").read_text())
    assert polygons["objects"][crowd]["label"].endswith("group")


def test_outer_boundary_redraws_a_shape_without_holes() -> None:
    mask = np.zeros((20, 30), bool)
    mask[3:9, 4:12] = True
    assert outer_boundary(mask) == [(4, 3), (11, 3), (11, 8), (4, 8)]  # corner pixel centres
    yy, xx = np.mgrid[:40, :50]
    blob = ((yy - 20) ** 2 / 150 + (xx - 22) ** 2 / 300 < 1) | ((yy > 18) & (xx > 30) & (xx < 45))
    canvas = Image.new("L", (50, 40), 0)
    ImageDraw.Draw(canvas).polygon(outer_boundary(blob), fill=1, outline=1)
    assert np.array_equal(np.asarray(canvas).astype(bool), blob)


def test_cli_writes_the_cityscapes_layout(tmp_path: Path, capsys) -> None:
    synthetic_main(["--root", str(tmp_path / "cs"), "--num-train", "1", "--num-val", "1",
                    "--layout", "cityscapes"])  # fmt: skip
    assert "Cityscapes layout" in capsys.readouterr().out
    assert (tmp_path / "cs" / "leftImg8bit" / "val" / "shapes").is_dir()
