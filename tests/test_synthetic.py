"""The synthetic shapes dataset: determinism, reuse, COCO validity and the properties that
make it a real problem (area ranges, occlusion, holes, empty images, varied sizes), and
the atomic publishing of its folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from datamodules import synthetic
from datamodules.coco_writer import dataset_stats
from datamodules.publish import MARKER, publish
from datamodules.scenes import (
    CATEGORIES,
    CROWD_AT,
    EMPTY_AT,
    MAX_SIDE,
    MIN_SIDE,
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    iter_scenes,
    render_indexed,
    render_scene,
)
from datamodules.synthetic import generate_shapes

# pycocotools' decode trips a numpy-2 DeprecationWarning on every annToMask; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

NUM_TRAIN, NUM_VAL = 40, 12
SPLITS = ("train", "val")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("a") / "shapes", NUM_TRAIN, NUM_VAL, 0, 0)


@pytest.fixture(scope="module")
def cocos(root: Path) -> dict[str, COCO]:
    return {s: COCO(str(root / "annotations" / f"instances_{s}.json")) for s in SPLITS}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _tight_bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def _has_hole(mask: np.ndarray) -> bool:
    """Background pixels not 4-connected to the border of the mask's box padded by one."""
    ys, xs = np.nonzero(mask)
    crop = np.pad(mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], 1)
    background = ~crop
    reach = np.zeros_like(crop)
    reach[0, :] = reach[-1, :] = reach[:, 0] = reach[:, -1] = True
    reach &= background
    while True:
        grown = reach.copy()
        grown[1:] |= reach[:-1]
        grown[:-1] |= reach[1:]
        grown[:, 1:] |= reach[:, :-1]
        grown[:, :-1] |= reach[:, 1:]
        grown &= background
        if (grown == reach).all():
            return bool((background & ~reach).any())
        reach = grown


def test_has_hole_helper() -> None:
    ring = np.zeros((9, 9), dtype=bool)
    ring[2:7, 2:7] = True
    assert not _has_hole(ring)
    ring[4, 4] = False
    assert _has_hole(ring)
    cup = ring.copy()
    cup[4, 4:7] = False  # the hole opens to the outside
    assert not _has_hole(cup)


def test_layout(root: Path) -> None:
    assert json.loads((root / ".complete").read_text())["num_train"] == NUM_TRAIN
    assert len(list((root / "images" / "train").glob("*.jpg"))) == NUM_TRAIN
    assert len(list((root / "images" / "val").glob("*.jpg"))) == NUM_VAL
    assert not list(root.parent.glob(".shapes.tmp-*"))  # the temp folder is gone


def test_deterministic_and_independent_of_workers(root: Path, tmp_path: Path) -> None:
    other = generate_shapes(tmp_path / "shapes", NUM_TRAIN, NUM_VAL, 0, workers=2)
    assert _files(other) == _files(root)


def test_seed_changes_images(root: Path) -> None:
    a = render_indexed("train", 0, 0).image
    b = render_indexed("train", 0, 1).image
    c = render_indexed("val", 0, 0).image
    assert a.shape != b.shape or not np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_reuse_writes_nothing(root: Path) -> None:
    paths = [root, *root.rglob("*")]
    before = {p: p.stat().st_mtime_ns for p in paths}
    parent_before = sorted(root.parent.iterdir())
    assert generate_shapes(root, NUM_TRAIN, NUM_VAL, 0) == root
    assert {p: p.stat().st_mtime_ns for p in paths} == before
    assert sorted(root.iterdir()) == sorted(p for p in paths if p.parent == root)
    assert sorted(root.parent.iterdir()) == parent_before


def test_mismatched_marker_raises(root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match=str(root)):
        generate_shapes(root, NUM_TRAIN, NUM_VAL, seed=1)
    with pytest.raises(FileExistsError, match="delete"):
        generate_shapes(root, NUM_TRAIN + 1, NUM_VAL, seed=0)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError, match=str(stray)):
        generate_shapes(stray, 2, 1)


def test_empty_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    root = generate_shapes(tmp_path / "empty", 2, 1)
    assert (root / ".complete").exists()


def test_coco_files_load_and_annotations_are_exact(root: Path, cocos: dict[str, COCO]) -> None:
    image_ids, ann_ids = [], []
    for split, coco in cocos.items():
        data = coco.dataset
        assert {"info", "licenses", "images", "annotations", "categories"} <= set(data)
        assert data["categories"] == CATEGORIES
        for img in data["images"]:
            with Image.open(root / "images" / split / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"])
                assert im.format == "JPEG"
        for ann in data["annotations"]:
            img = coco.imgs[ann["image_id"]]
            mask = coco.annToMask(ann)
            assert mask.shape == (img["height"], img["width"])
            assert ann["segmentation"]["size"] == [img["height"], img["width"]]
            assert isinstance(ann["segmentation"]["counts"], str)
            assert int(mask.sum()) == ann["area"] >= MIN_VISIBLE_PIXELS
            assert ann["bbox"] == _tight_bbox(mask)
            assert ann["iscrowd"] in (0, 1)
        image_ids += [img["id"] for img in data["images"]]
        ann_ids += [ann["id"] for ann in data["annotations"]]
    assert len(set(image_ids)) == len(image_ids) == NUM_TRAIN + NUM_VAL
    assert len(set(ann_ids)) == len(ann_ids)
    crowd = [a for a in cocos["train"].dataset["annotations"] if a["iscrowd"]]
    assert crowd, "the schedule puts a crowd region in image 5 of every 20"


def test_masks_of_one_image_are_disjoint(cocos: dict[str, COCO]) -> None:
    coco = cocos["train"]
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        if anns:
            stacked = np.stack([coco.annToMask(a) for a in anns]).astype(int)
            assert stacked.sum(axis=0).max() == 1


def test_all_area_ranges_in_each_split(cocos: dict[str, COCO]) -> None:
    for split, coco in cocos.items():
        areas = np.array([a["area"] for a in coco.dataset["annotations"] if not a["iscrowd"]])
        assert (areas < 32**2).any(), split
        assert ((areas >= 32**2) & (areas <= 96**2)).any(), split
        assert (areas > 96**2).any(), split


def test_empty_images_in_each_split(cocos: dict[str, COCO]) -> None:
    for split, coco in cocos.items():
        empty = [i for i in coco.getImgIds() if not coco.getAnnIds(imgIds=i)]
        assert 1 <= len(empty) <= max(2, len(coco.getImgIds()) // 5), split


def test_categories_non_contiguous_and_all_used(cocos: dict[str, COCO]) -> None:
    ids = [c["id"] for c in CATEGORIES]
    assert 6 <= len(ids) <= 8
    assert ids != list(range(1, len(ids) + 1))
    assert len({c["name"] for c in CATEGORIES}) == len(ids)
    assert all(c["supercategory"] for c in CATEGORIES)
    used = {a["category_id"] for a in cocos["train"].dataset["annotations"]}
    assert used == set(ids)


def test_sizes_and_aspect_ratios_vary(cocos: dict[str, COCO]) -> None:
    images = [img for coco in cocos.values() for img in coco.dataset["images"]]
    sizes = {(img["height"], img["width"]) for img in images}
    aspects = np.array([img["width"] / img["height"] for img in images])
    sides = np.array([s for size in sizes for s in size])
    assert len(sizes) >= len(images) // 2
    assert sides.min() >= MIN_SIDE
    assert sides.max() <= MAX_SIDE
    assert aspects.min() < 0.8
    assert aspects.max() > 1.25
    assert aspects.min() >= 0.49
    assert aspects.max() <= 2.01


def test_holed_shapes_exist(cocos: dict[str, COCO]) -> None:
    holed = {c["id"] for c in CATEGORIES if c["name"] in ("ring", "frame")}
    coco = cocos["train"]
    anns = [a for a in coco.dataset["annotations"] if a["category_id"] in holed]
    anns.sort(key=lambda a: -a["area"])  # large ones keep their hole most often
    assert any(_has_hole(coco.annToMask(a).astype(bool)) for a in anns[:10])


def test_occlusion_happened(root: Path) -> None:
    stats = dataset_stats(root)
    for split in SPLITS:
        s = stats[split]
        assert s["occluded"] > 0, split
        assert s["small"] + s["medium"] + s["large"] == s["instances"]
    assert stats["train"]["images"] == NUM_TRAIN


def test_render_scene_contract() -> None:
    occluded = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        scene = render_scene(rng, height=240, width=300, num_objects=12)
        n = len(scene.labels)
        assert scene.image.shape == (240, 300, 3)
        assert scene.image.dtype == np.uint8
        assert scene.masks.shape == (n, 240, 300)
        assert scene.masks.dtype == bool
        assert len(scene.iscrowd) == len(scene.full_areas) == n
        assert all(0 <= label < len(CATEGORIES) for label in scene.labels)
        assert scene.masks.sum(axis=0).max(initial=0) <= 1  # visible masks are disjoint
        visible = scene.masks.sum(axis=(1, 2))
        full = np.array(scene.full_areas)
        assert (visible <= full).all()
        assert (visible >= MIN_VISIBLE_PIXELS).all()
        assert (visible >= MIN_VISIBLE_FRACTION * full).all()
        assert n + scene.num_dropped <= 12
        occluded += int((visible < full).sum())
    assert occluded > 0
    empty = render_scene(np.random.default_rng(0), num_objects=0)
    assert empty.masks.shape[0] == 0
    assert empty.labels == []
    assert empty.num_dropped == 0


def test_iter_scenes_follows_the_schedule() -> None:
    scenes = dict(iter_scenes("val", 6, seed=3))
    assert list(scenes) == list(range(6))
    assert scenes[EMPTY_AT].labels == []
    assert any(scenes[CROWD_AT].iscrowd)


def test_cli_prints_statistics(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synthetic.main(["--root", str(root), "--num-train", str(NUM_TRAIN), "--num-val", "12"])
    out = capsys.readouterr().out
    assert str(root) in out
    for word in ("train", "val", "empty", "small", "medium", "large", "dropped", "occluded"):
        assert word in out


def test_publish_keeps_the_folder_another_process_published_first(tmp_path: Path) -> None:
    root, marker = tmp_path / "data", {"dataset": "a"}

    def write(tmp: Path) -> None:
        (tmp / "file").write_text("mine")
        publish(root, marker, lambda other: (other / "file").write_text("theirs"))

    assert publish(root, marker, write) == root
    assert (root / "file").read_text() == "theirs"
    assert json.loads((root / MARKER).read_text()) == marker
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folder left
    other = tmp_path / "other"  # published meanwhile, but with another marker
    with pytest.raises(FileExistsError, match=str(other)):
        publish(other, {"dataset": "b"}, lambda tmp: publish(other, marker, lambda _: None))


def test_interrupted_publish_leaves_nothing(tmp_path: Path) -> None:
    def write(tmp: Path) -> None:
        (tmp / "half").write_text("written")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish(tmp_path / "data", {"dataset": "a"}, write)
    assert list(tmp_path.iterdir()) == []
