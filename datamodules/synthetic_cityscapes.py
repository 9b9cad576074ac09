"""Writing the synthetic shapes scenes in the Cityscapes layout, for the official evaluation.

``generate_shapes(root, ..., layout="cityscapes")`` (CLI: ``python -m datamodules.synthetic
--layout cityscapes``) writes the same scenes as the COCO layout::

    root/leftImg8bit/{train,val}/shapes/shapes_000000_<index:06d>_leftImg8bit.png
    root/gtFine/{train,val}/shapes/shapes_000000_<index:06d>_gtFine_instanceIds.png
    root/gtFine/{train,val}/shapes/shapes_000000_<index:06d>_gtFine_polygons.json

- Pixels: the COCO layout's JPEG, decoded and stored as PNG (identical pixels in both layouts).
- Classes: shape class ``i`` (``scenes.CATEGORIES[i]``: disc, triangle, rectangle, star,
  ring, cross, crescent, frame) becomes the ``i``-th Cityscapes thing class by label id
  (person 24, rider 25, car 26, truck 27, bus 28, train 31, motorcycle 32, bicycle 33), so
  the official script can score them; metrics named ``cityscapes/AP/person`` are the discs'.
  There are exactly as many shape classes as thing classes (checked at import).
- Instance ids: ``label_id * 1000 + k``, ``k`` counting the instances of that class in the
  image; a crowd region becomes a group region (its pixels hold the bare label id).
- Background: the id of ``road``, the first Cityscapes label that is evaluated but has no
  instances. (``unlabeled``, 0, is void: the official script would ignore false positives
  on it.)
- Polygons: per instance (bottom to top), the outer boundary of its first visible part in
  raster order, through boundary pixel centres as Cityscapes' polygons are; holes and
  further parts exist only in the instance-id PNG, which is what training and evaluation
  read.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS
from PIL import Image

from datamodules.cityscapes import INSTANCE_ID_DIVISOR, cityscapes_categories
from datamodules.coco_writer import encode_jpeg
from datamodules.scenes import CATEGORIES, Scene, render_indexed

CITY = "shapes"
# shape class i -> Cityscapes label id of the i-th thing class
SHAPE_LABEL_IDS = cityscapes_categories().cat_ids
if len(CATEGORIES) != len(SHAPE_LABEL_IDS):
    raise ImportError(
        f"{len(CATEGORIES)} shape classes for {len(SHAPE_LABEL_IDS)} Cityscapes thing classes: "
        "the one-to-one mapping of datamodules.synthetic_cityscapes needs as many of each"
    )
BACKGROUND_ID = next(
    label.id for label in CITYSCAPES_LABELS if not label.hasInstances and not label.ignoreInEval
)
_NAMES = {label.id: label.name for label in CITYSCAPES_LABELS}


def file_core(index: int) -> str:
    """``<city>_<seq>_<frame>`` of image ``index`` of a split."""
    return f"{CITY}_000000_{index:06d}"


def instance_id_map(scene: Scene) -> np.ndarray:
    """(H, W) uint16 Cityscapes instance ids of a scene (its masks are disjoint)."""
    height, width = scene.image.shape[:2]
    ids = np.full((height, width), BACKGROUND_ID, dtype=np.uint16)
    counts: dict[int, int] = {}
    for mask, label, crowd in zip(scene.masks, scene.labels, scene.iscrowd, strict=True):
        label_id = SHAPE_LABEL_IDS[label]
        if crowd:
            ids[mask] = label_id
        else:
            ids[mask] = label_id * INSTANCE_ID_DIVISOR + counts.get(label_id, 0)
            counts[label_id] = counts.get(label_id, 0) + 1
    return ids


# 8-neighbour offsets (dy, dx), clockwise starting west
_RING = [(0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1)]


def outer_boundary(mask: np.ndarray) -> list[tuple[int, int]]:
    """Moore-neighbour trace of the outer boundary of ``mask``'s first 8-connected part
    (raster order), as (x, y) pixel positions, clockwise, collinear points dropped."""
    padded = np.pad(mask.astype(bool), 1)  # (H + 2, W + 2): every neighbour exists
    ys, xs = np.nonzero(padded)
    start = (int(ys[0]), int(xs[0]))  # top row, leftmost: its west neighbour is background
    trace, point, back = [start], start, 0
    first_step = None
    for _ in range(4 * int(padded.sum()) + 8):  # a boundary visits a pixel at most 4 times
        for turn in range(8):
            k = (back + turn) % 8
            nxt = (point[0] + _RING[k][0], point[1] + _RING[k][1])
            if padded[nxt]:
                break
        else:
            break  # a single pixel
        if first_step is None:
            first_step = nxt
        elif point == start and nxt == first_step:
            break
        # search the next pixel from the background cell examined just before it
        prev = (point[0] + _RING[k - 1][0], point[1] + _RING[k - 1][1])
        back = _RING.index((prev[0] - nxt[0], prev[1] - nxt[1]))
        point = nxt
        trace.append(point)
    if len(trace) > 1 and trace[-1] == start:
        trace.pop()
    corners = [
        p
        for i, p in enumerate(trace)
        if len(trace) < 3
        or (p[0] - trace[i - 1][0], p[1] - trace[i - 1][1])
        != (trace[(i + 1) % len(trace)][0] - p[0], trace[(i + 1) % len(trace)][1] - p[1])
    ]
    return [(x - 1, y - 1) for y, x in corners]


def polygons_json(scene: Scene) -> dict:
    """Cityscapes' polygons file of a scene: size and its objects, bottom to top."""
    height, width = scene.image.shape[:2]
    objects = [
        {
            "label": _NAMES[SHAPE_LABEL_IDS[label]] + ("group" if crowd else ""),
            "polygon": [list(p) for p in outer_boundary(mask)],
        }
        for mask, label, crowd in zip(scene.masks, scene.labels, scene.iscrowd, strict=True)
    ]
    return {"imgHeight": height, "imgWidth": width, "objects": objects}


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_cityscapes_image(job: tuple[str, int, int]) -> tuple[bytes, bytes, str]:
    """Image ``index`` of ``split``: (leftImg8bit PNG, instanceIds PNG, polygons JSON)."""
    split, index, seed = job
    scene = render_indexed(split, index, seed)
    jpeg = io.BytesIO(encode_jpeg(scene.image))
    pixels = np.asarray(Image.open(jpeg).convert("RGB"))  # (H, W, 3): the COCO layout's pixels
    return _png(pixels), _png(instance_id_map(scene)), json.dumps(polygons_json(scene))


def write_cityscapes_split(
    root: Path,
    split: str,
    num: int,
    seed: int,
    imap: Callable[..., Iterator[tuple[bytes, bytes, str]]] = map,
) -> None:
    """Render ``num`` images of ``split`` into ``root/leftImg8bit`` and ``root/gtFine``."""
    image_dir = root / "leftImg8bit" / split / CITY
    gt_dir = root / "gtFine" / split / CITY
    image_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    jobs = [(split, index, seed) for index in range(num)]
    for index, (image, ids, polygons) in enumerate(imap(encode_cityscapes_image, jobs)):
        core = file_core(index)
        (image_dir / f"{core}_leftImg8bit.png").write_bytes(image)
        (gt_dir / f"{core}_gtFine_instanceIds.png").write_bytes(ids)
        (gt_dir / f"{core}_gtFine_polygons.json").write_text(polygons)
