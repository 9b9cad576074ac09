"""The COCO 2017 layout of the synthetic shapes scenes: its folders, files and 80 categories.

``generate_shapes(root, ..., layout="coco2017")`` (CLI: ``python -m datamodules.synthetic
--layout coco2017``) writes the same scenes as the default layout, in the folders and files
that the paper configuration (``conf/data/coco.yaml``) reads under ``data.root``::

    root/train2017/000000000001.jpg ...          file_name is relative to train2017/
    root/val2017/...
    root/annotations/instances_train2017.json
    root/annotations/instances_val2017.json
    root/.complete                               marker, with "layout": "coco2017"

- Images and annotations: the default layout's JPEGs byte for byte, and its annotations
  (ids, image ids, RLE masks, areas, boxes, crowd flags) with only the category ids changed.
- Categories: COCO's 80 categories with their ids (1..90; 12, 26, 29, 30, 45, 66, 68, 69,
  71 and 83 unused), so a model built from these files has COCO's 80 classes. Names come
  from torchvision's COCO category list, ``FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta
  ["categories"]`` (91 entries indexed by category id, ``__background__`` at 0 and ``N/A``
  at the unused ids; reading it downloads nothing). Supercategories are COCO's 12, from
  ``SUPERCATEGORY_SPANS``.
- Shape class ``i`` (``scenes.CATEGORIES[i]``) is annotated as ``SHAPE_CATEGORY_IDS[i]``:
  disc 1 (person), triangle 13 (stop sign), rectangle 27 (backpack), star 46 (wine glass),
  ring 67 (dining table), cross 72 (tv), crescent 84 (book), frame 90 (toothbrush). Each id
  after the first follows an unused id or is the last, so code that takes ids for dense
  labels goes wrong visibly. The other 72 categories have no annotations.
"""

from __future__ import annotations

from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

from datamodules.coco_writer import CocoFiles

# COCO 2017's supercategories as inclusive category-id spans: (name, first id, last id).
SUPERCATEGORY_SPANS: tuple[tuple[str, int, int], ...] = (
    ("person", 1, 1),
    ("vehicle", 2, 9),
    ("outdoor", 10, 15),
    ("animal", 16, 25),
    ("accessory", 27, 33),
    ("sports", 34, 43),
    ("kitchen", 44, 51),
    ("food", 52, 61),
    ("furniture", 62, 70),
    ("electronic", 72, 77),
    ("appliance", 78, 82),
    ("indoor", 84, 90),
)
# shape class i (scenes.CATEGORIES[i]) -> COCO category id (CocoFiles checks them)
SHAPE_CATEGORY_IDS: tuple[int, ...] = (1, 13, 27, 46, 67, 72, 84, 90)
NUM_COCO_CATEGORIES = 80
_NOT_A_CATEGORY = ("__background__", "N/A")


def supercategory(category_id: int) -> str:
    """COCO 2017's supercategory of a category id (1..90)."""
    for name, first, last in SUPERCATEGORY_SPANS:
        if first <= category_id <= last:
            return name
    raise ValueError(f"supercategory: category id {category_id} is in no COCO supercategory")


def coco2017_categories() -> list[dict]:
    """COCO 2017's categories by ascending id: dicts with id, name and supercategory."""
    names = FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]  # (91,) by category id
    return [
        {"id": i, "name": name, "supercategory": supercategory(i)}
        for i, name in enumerate(names)
        if name not in _NOT_A_CATEGORY
    ]


COCO2017_CATEGORIES = coco2017_categories()
if len(COCO2017_CATEGORIES) != NUM_COCO_CATEGORIES:
    raise ImportError(
        f"torchvision's COCO category list gives {len(COCO2017_CATEGORIES)} categories, not "
        f"{NUM_COCO_CATEGORIES}: datamodules.synthetic_coco2017 cannot write COCO's categories"
    )

COCO2017_FILES = CocoFiles(
    image_dir="{split}2017",
    ann_file="annotations/instances_{split}2017.json",
    categories=COCO2017_CATEGORIES,
    shape_ids=SHAPE_CATEGORY_IDS,
)
