"""Synthetic shapes: a seeded, COCO-format instance-segmentation dataset.

Used for CPU demos, CI tests and overfit runs. It is meant to be a real (small) problem:

- 8 classes told apart by SHAPE only (colour is random per instance): disc, triangle,
  rectangle, star, ring (hole), cross, crescent, frame (hole); random rotation, scale and
  aspect. Category ids are NON-contiguous (1, 2, 4, 7, 9, 12, 15, 20) to exercise id mapping.
- objects from a few pixels to image-filling, so every COCO area range (small < 32²,
  medium 32²..96², large > 96² visible pixels) is populated;
- occlusion: objects are painted in z-order, each annotation is the VISIBLE mask; instances
  with fewer than ``MIN_VISIBLE_PIXELS`` visible pixels or less than ``MIN_VISIBLE_FRACTION``
  of their in-image area are painted but not annotated (and counted);
- moderately cluttered backgrounds (gradients, smooth noise, irregular blobs, lines,
  scribbles, arcs), objects in a colour that contrasts with what lies under them,
  shaded/textured objects, pixel noise, JPEG q=90;
- varied image sizes (sides 224..512) and aspect ratios (0.5..2), 5 % empty images,
  1..8 objects per image and, in 5 % of the images, a crowd region (``iscrowd=1``): a dense
  cluster of tiny objects of one class annotated as one RLE region.

Difficulty (version 2) is set to the calibration the project's issues state for data of
this kind: torchvision's FCOS with a ResNet-18 FPN-64 from scratch reaches about 18 bbox AP
in 15 minutes on 2 CPU cores. Version 1 (12 objects, 45 % tiny, camouflage colours, heavy
clutter) held every detector under 2 AP at that budget, too hard to tell recipes apart.

Every image comes from its own RNG seeded from ``(seed, split, index)`` (``scene_rng``), so
the output is byte-identical for the same arguments and a split can be regenerated image by
image (``iter_scenes``). ``generate_shapes`` writes the COCO layout::

    root/images/train/000000000001.jpg ...      file_name is relative to images/<split>/
    root/images/val/...
    root/annotations/instances_train.json
    root/annotations/instances_val.json
    root/.complete                              written last: generator version + arguments

Other layouts hold the same scenes (``LAYOUTS``):

- ``layout="coco2017"``: COCO 2017's folders and file names (train2017/, val2017/,
  annotations/instances_{train,val}2017.json) and COCO's 80 categories, the shapes annotated
  with 8 of them (see ``datamodules.synthetic_coco2017``);
- ``layout="cityscapes"``: Cityscapes' layout (leftImg8bit/, gtFine/ instance-id PNGs and
  polygons; see ``datamodules.synthetic_cityscapes``).

CLI: ``python -m datamodules.synthetic --root DIR [--num-train N --num-val N --seed S]
[--workers W] [--layout {coco,coco2017,cityscapes}]``.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

GENERATOR_VERSION = 2
LAYOUTS = ("coco", "coco2017", "cityscapes")

CATEGORIES: list[dict] = [
    {"id": 1, "name": "disc", "supercategory": "curved"},
    {"id": 2, "name": "triangle", "supercategory": "polygonal"},
    {"id": 4, "name": "rectangle", "supercategory": "polygonal"},
    {"id": 7, "name": "star", "supercategory": "polygonal"},
    {"id": 9, "name": "ring", "supercategory": "curved"},
    {"id": 12, "name": "cross", "supercategory": "polygonal"},
    {"id": 15, "name": "crescent", "supercategory": "curved"},
    {"id": 20, "name": "frame", "supercategory": "polygonal"},
]

# Image geometry.
MIN_SIDE, MAX_SIDE = 224, 512
MAX_ASPECT = 2.0
# Scene content.
MAX_OBJECTS = 8
EMPTY_EVERY = 20  # index % EMPTY_EVERY == EMPTY_AT  -> no objects (5 %)
EMPTY_AT = 3
CROWD_EVERY = 20  # index % CROWD_EVERY == CROWD_AT  -> one crowd region (5 %)
CROWD_AT = 5
# Annotation rules.
MIN_VISIBLE_PIXELS = 12
MIN_VISIBLE_FRACTION = 0.3
# Placement: centres are redrawn (up to 10 times) until bounding circles overlap by at most
# 1 - SPACING of their radii' sum, so occlusion is partial, not the rule.
SPACING = 0.75
# COCO area ranges (pycocotools COCOeval): small < 32², medium 32²..96², large > 96².
SMALL_MAX, MEDIUM_MAX = 32**2, 96**2
JPEG_QUALITY = 90


@dataclass
class Scene:
    """One rendered image with its visible instance masks, in z-order (bottom first)."""

    image: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray  # (n, H, W) bool, visible masks, pairwise disjoint
    labels: list[int]  # index into CATEGORIES (0..len-1)
    iscrowd: list[bool]
    full_areas: list[int] = field(default_factory=list)  # in-image area before occlusion
    num_dropped: int = 0  # painted instances left unannotated (too little visible)


# --------------------------------------------------------------------------------------
# Shape rasterisers. A unit shape is a list of (polygon (N, 2) in [-1, 1]², filled) drawn in
# order: filled polygons add pixels, unfilled ones cut holes.
# --------------------------------------------------------------------------------------

Outline = list[tuple[np.ndarray, bool]]


def _circle(radius: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 64) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)  # (n, 2)


def _square(half_w: float = 1.0, half_h: float = 1.0) -> np.ndarray:
    return np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])


def _disc(rng: np.random.Generator) -> Outline:
    return [(_circle(), True)]


def _triangle(rng: np.random.Generator) -> Outline:
    angles = np.pi / 2 + np.array([0.0, 2.0, 4.0]) * np.pi / 3 + rng.uniform(-0.3, 0.3, 3)
    pts = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (3, 2)
    return [(pts - pts.mean(axis=0), True)]


def _rectangle(rng: np.random.Generator) -> Outline:
    return [(_square(rng.uniform(0.45, 1.0), 1.0), True)]


def _star(rng: np.random.Generator) -> Outline:
    points = int(rng.integers(5, 8))
    radii = np.tile([1.0, rng.uniform(0.38, 0.55)], points)  # (2·points,)
    t = np.arange(2 * points) * np.pi / points
    return [(np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1), True)]


def _ring(rng: np.random.Generator) -> Outline:
    return [(_circle(), True), (_circle(rng.uniform(0.45, 0.7)), False)]


def _cross(rng: np.random.Generator) -> Outline:
    a = rng.uniform(0.22, 0.4)  # arm half-width
    pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
           (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]  # fmt: skip
    return [(np.array(pts, dtype=np.float64), True)]


def _crescent(rng: np.random.Generator) -> Outline:
    bite = _circle(rng.uniform(0.75, 0.95), cx=rng.uniform(0.35, 0.6))
    return [(_circle(), True), (bite, False)]


def _frame(rng: np.random.Generator) -> Outline:
    inner = rng.uniform(0.45, 0.7)
    return [(_square(), True), (_square(inner, inner), False)]


# Index-aligned with CATEGORIES.
SHAPES = [_disc, _triangle, _rectangle, _star, _ring, _cross, _crescent, _frame]
assert [f.__name__[1:] for f in SHAPES] == [c["name"] for c in CATEGORIES]


def _draw_outline(outline: Outline, width: int, height: int, offset: np.ndarray) -> np.ndarray:
    """Rasterise an outline (already in pixel coordinates) onto a (height, width) canvas."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, filled in outline:
        draw.polygon((poly - offset).ravel().tolist(), fill=255 if filled else 0)
    return np.asarray(canvas) > 0  # (height, width)


def _unit_fill_fraction(outline: Outline, res: int = 64) -> float:
    """Fraction of the [-1, 1]² square covered by a unit outline."""
    scaled = [((poly + 1.0) * (res / 2.0), filled) for poly, filled in outline]
    return max(float(_draw_outline(scaled, res, res, np.zeros(2)).mean()), 1e-3)


def _place(
    outline: Outline, scale: float, aspect: float, angle: float, center: np.ndarray
) -> Outline:
    """Scale (aspect-preserving area), rotate and translate a unit outline to pixels."""
    stretch = np.array([scale * np.sqrt(aspect), scale / np.sqrt(aspect)])
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, s], [-s, c]])  # row-vector convention: p @ rot
    return [((poly * stretch) @ rot + center, filled) for poly, filled in outline]


def rasterise_shape(outline: Outline, height: int, width: int) -> tuple[int, int, np.ndarray]:
    """Rasterise a placed outline, clipped to the image: (y0, x0, crop mask (h, w) bool).

    The crop is empty (shape (0, 0)) when the shape lies outside the image.
    """
    pts = np.concatenate([poly for poly, filled in outline if filled])
    x0, y0 = np.maximum(np.floor(pts.min(axis=0)).astype(int), 0)
    x1 = min(int(np.ceil(pts[:, 0].max())) + 1, width)
    y1 = min(int(np.ceil(pts[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return 0, 0, np.zeros((0, 0), dtype=bool)
    return int(y0), int(x0), _draw_outline(outline, x1 - x0, y1 - y0, np.array([x0, y0]))


# --------------------------------------------------------------------------------------
# Background, clutter and appearance.
# --------------------------------------------------------------------------------------


def _smooth_noise(
    rng: np.random.Generator, height: int, width: int, cells: int, channels: int = 1
) -> np.ndarray:
    """Value noise in [-1, 1]-ish: a (cells × cells) random grid, bicubically upsampled."""
    cells_y = max(2, round(cells * height / max(height, width)))
    cells_x = max(2, round(cells * width / max(height, width)))
    grid = rng.uniform(-1.0, 1.0, (channels, cells_y, cells_x)).astype(np.float32)
    up = [np.asarray(Image.fromarray(g).resize((width, height), Image.BICUBIC)) for g in grid]
    return np.stack(up, axis=-1)  # (height, width, channels)


def _random_color(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> np.ndarray:
    base = palette[rng.integers(len(palette))]
    return np.clip(base + rng.normal(0.0, jitter, 3), 0.0, 255.0).astype(np.float32)


def _background(
    rng: np.random.Generator, height: int, width: int, palette: np.ndarray
) -> np.ndarray:
    """Gradient between two palette colours + low- and mid-frequency noise, (H, W, 3) float."""
    c0, c1 = _random_color(rng, palette, 20), _random_color(rng, palette, 20)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    xs = np.arange(width, dtype=np.float32)[None, :] * np.cos(angle)  # (1, W)
    ys = np.arange(height, dtype=np.float32)[:, None] * np.sin(angle)  # (H, 1)
    t = xs + ys  # (H, W)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    image = c0 + t[..., None] * (c1 - c0)  # (H, W, 3)
    image += _smooth_noise(rng, height, width, int(rng.integers(2, 6)), 3) * rng.uniform(5, 20)
    cells = max(height, width) // int(rng.integers(6, 20))
    image += _smooth_noise(rng, height, width, cells, 1) * rng.uniform(2, 8)
    return image


def _paint_blobs(rng: np.random.Generator, image: np.ndarray, palette: np.ndarray) -> None:
    """Irregular (non-shape) blobs: thresholded smooth noise under a radial falloff."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(0, 2))):
        size = int(rng.integers(16, 100))
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size / 2.0) - 1.0
        field_ = 1.0 - (xx**2 + yy**2) + 0.9 * _smooth_noise(rng, size, size, 4)[..., 0]
        blob = field_ > 0.55  # (size, size)
        y0, x0 = int(rng.integers(-size // 2, height)), int(rng.integers(-size // 2, width))
        ys, xs = slice(max(y0, 0), min(y0 + size, height)), slice(max(x0, 0), min(x0 + size, width))
        blob = blob[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        if blob.size == 0:
            continue
        color = _random_color(rng, palette, 25)
        texture = _smooth_noise(rng, *blob.shape, max(2, size // 6), 1) * rng.uniform(5, 25)
        region = image[ys, xs]
        region[blob] = (color + texture)[blob]


def _draw_strokes(rng: np.random.Generator, image: Image.Image, palette: np.ndarray) -> None:
    """Thin lines, scribbles and arcs: clutter that is not an object."""
    width, height = image.size
    draw = ImageDraw.Draw(image)

    def color() -> tuple[int, int, int]:
        return tuple(int(v) for v in _random_color(rng, palette, 25))

    def point() -> tuple[float, float]:
        return float(rng.uniform(0, width)), float(rng.uniform(0, height))

    for _ in range(int(rng.integers(0, 3))):
        draw.line([point(), point()], fill=color(), width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, 2))):
        steps = rng.normal(0.0, rng.uniform(8, 30), (int(rng.integers(4, 14)), 2))
        walk = np.cumsum(steps, axis=0) + np.array(point())  # (n, 2)
        draw.line(
            [tuple(p) for p in walk.tolist()],
            fill=color(),
            width=int(rng.integers(1, 5)),
            joint="curve",
        )
    for _ in range(int(rng.integers(0, 2))):
        (cx, cy), r = point(), float(rng.uniform(10, 120))
        start = float(rng.uniform(0, 360))
        draw.arc(
            [cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r],
            start,
            start + float(rng.uniform(60, 240)),
            fill=color(),
            width=int(rng.integers(1, 4)),
        )


def _contrasting_color(
    rng: np.random.Generator, canvas: np.ndarray, center: np.ndarray, min_distance: float = 90.0
) -> np.ndarray:
    """A random colour at least ``min_distance`` (RGB L2) from the canvas at ``center``.

    Objects stay visible against what lies under them (the farthest of 8 draws otherwise);
    they may still resemble each other, the clutter or another part of the background.
    """
    height, width = canvas.shape[:2]
    x = int(np.clip(center[0], 0, width - 1))
    y = int(np.clip(center[1], 0, height - 1))
    under = canvas[y, x]  # (3,)
    draws = rng.uniform(0.0, 255.0, (8, 3)).astype(np.float32)  # (8, 3)
    distance = np.linalg.norm(draws - under, axis=1)  # (8,)
    far = np.flatnonzero(distance >= min_distance)
    return draws[far[0] if far.size else int(distance.argmax())]


def _paint_object(
    rng: np.random.Generator,
    image: np.ndarray,
    y0: int,
    x0: int,
    mask: np.ndarray,
    color: np.ndarray,
    center: np.ndarray,
    scale: float,
) -> None:
    """Fill mask (a crop at (y0, x0)) with a shaded colour plus optional stripes or mottling."""
    h, w = mask.shape
    ys = np.arange(y0, y0 + h, dtype=np.float32)[:, None] - center[1]  # (h, 1)
    xs = np.arange(x0, x0 + w, dtype=np.float32)[None, :] - center[0]  # (1, w)
    d = rng.normal(size=2)
    d /= np.linalg.norm(d) + 1e-6
    shade = (xs * d[0] + ys * d[1]) * (rng.uniform(10, 45) / max(scale, 1.0))  # (h, w)
    fill = color + shade[..., None]  # (h, w, 3)
    kind = rng.integers(3)
    if kind == 1:  # stripes
        phi = rng.uniform(0, np.pi)
        period = rng.uniform(3.0, max(4.0, scale / 2.0))
        wave = np.sin((xs * np.cos(phi) + ys * np.sin(phi)) * (2 * np.pi / period))
        fill = fill + (rng.uniform(6, 25) * wave)[..., None]
    elif kind == 2:  # mottled
        fill = fill + _smooth_noise(rng, h, w, max(2, max(h, w) // 6), 3) * rng.uniform(6, 25)
    region = image[y0 : y0 + h, x0 : x0 + w]
    region[mask] = fill[mask]


# --------------------------------------------------------------------------------------
# Scene composition.
# --------------------------------------------------------------------------------------


def _sample_image_size(rng: np.random.Generator) -> tuple[int, int]:
    long_side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    aspect = float(np.exp(rng.uniform(0.0, np.log(min(MAX_ASPECT, long_side / MIN_SIDE)))))
    short_side = max(MIN_SIDE, round(long_side / aspect))
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def _sample_visible_area(rng: np.random.Generator, height: int, width: int) -> float:
    """Target area in pixels: small / medium / large with probabilities 0.2 / 0.45 / 0.35."""
    u = rng.random()
    if u < 0.2:
        low, high = 150.0, 900.0
    elif u < 0.65:
        low, high = 1200.0, 8500.0
    else:
        low, high = 10500.0, max(11000.0, 0.25 * height * width)
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


@dataclass
class _Placed:
    label: int
    outline: Outline  # in pixels
    scale: float
    center: np.ndarray
    radius: float = 0.0  # of the bounding circle, pixels
    crowd: list[Outline] = field(default_factory=list)  # crowd: its tiny members


def _sample_object(
    rng: np.random.Generator, height: int, width: int, placed: list[_Placed], tries: int = 10
) -> _Placed:
    """One object; its centre keeps it mostly inside the image and, if possible, apart from
    the ``placed`` ones (bounding circles overlap by at most ``1 - SPACING`` of their radii)."""
    label = int(rng.integers(len(CATEGORIES)))
    unit = SHAPES[label](rng)
    area = _sample_visible_area(rng, height, width)
    scale = float(np.sqrt(area / (4.0 * _unit_fill_fraction(unit))))
    aspect = float(np.exp(rng.uniform(np.log(0.67), np.log(1.5))))
    radius = scale * np.sqrt(max(aspect, 1.0 / aspect))  # bounding circle of the unit square
    # keep most of the shape inside the image: a truncated shape is often another class
    margin = np.minimum(0.6 * scale, [0.5 * width, 0.5 * height])  # (2,) x, y
    others = np.array([[*p.center, p.radius] for p in placed]).reshape(-1, 3)  # (m, 3)
    best, best_room = None, -np.inf
    for _ in range(tries):
        center = rng.uniform(margin, [width - margin[0], height - margin[1]])  # (2,)
        gaps = np.linalg.norm(others[:, :2] - center, axis=1) / (others[:, 2] + radius)  # (m,)
        room = float(gaps.min()) if len(gaps) else np.inf
        if room > best_room:
            best, best_room = center, room
        if room >= SPACING:
            break
    outline = _place(unit, scale, aspect, rng.uniform(0, 2 * np.pi), best)
    return _Placed(label, outline, scale, best, radius=float(radius))


def _sample_crowd(rng: np.random.Generator, height: int, width: int) -> _Placed:
    """A dense cluster of 10..30 tiny shapes of one class, annotated as one crowd region."""
    label = int(rng.integers(len(CATEGORIES)))
    center = rng.uniform([0.1 * width, 0.1 * height], [0.9 * width, 0.9 * height])
    spread = rng.uniform(10, 30)
    members = []
    for _ in range(int(rng.integers(10, 31))):
        at = center + rng.normal(0.0, spread, 2)
        aspect = float(np.exp(rng.uniform(np.log(0.67), np.log(1.5))))
        unit = SHAPES[label](rng)
        members.append(_place(unit, rng.uniform(2.5, 5.0), aspect, rng.uniform(0, 2 * np.pi), at))
    return _Placed(label, [], spread, center, crowd=members)


def render_scene(
    rng: np.random.Generator,
    height: int | None = None,
    width: int | None = None,
    num_objects: int | None = None,
    crowd: bool | None = None,
) -> Scene:
    """Render one image. Unset arguments are drawn from ``rng``.

    num_objects: 0..MAX_OBJECTS (default: 0 with probability 5 %, else 1..MAX_OBJECTS);
    crowd: add one crowd region (default: probability 5 %; never in an empty scene).
    """
    if height is None or width is None:
        height, width = _sample_image_size(rng)
    if num_objects is None:
        num_objects = 0 if rng.random() < 0.05 else int(rng.integers(1, MAX_OBJECTS + 1))
    if crowd is None:
        crowd = bool(rng.random() < 0.05)
    crowd = crowd and num_objects > 0

    palette = rng.uniform(15.0, 240.0, (5, 3))
    canvas = _background(rng, height, width, palette)  # (H, W, 3) float32
    _paint_blobs(rng, canvas, palette)
    pil = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    _draw_strokes(rng, pil, palette)
    canvas = np.asarray(pil).astype(np.float32)

    # Z-order: mostly large objects first (table under cups), with noise so sizes interleave.
    objects: list[_Placed] = []
    for _ in range(num_objects):
        objects.append(_sample_object(rng, height, width, objects))
    keys = [2.0 * np.log(o.scale) + rng.normal(0.0, 1.0) for o in objects]
    objects = [objects[i] for i in np.argsort(keys)[::-1]]
    if crowd:
        objects.insert(
            int(rng.integers(len(objects) // 2, len(objects) + 1)),
            _sample_crowd(rng, height, width),
        )

    owner = np.full((height, width), -1, dtype=np.int16)  # index of the top object per pixel
    boxes, full_areas = [], []  # per object: crop (y0, y1, x0, x1) and in-image area
    for i, obj in enumerate(objects):
        color = _contrasting_color(rng, canvas, obj.center)
        box = [height, 0, width, 0]
        for outline in obj.crowd or [obj.outline]:
            y0, x0, mask = rasterise_shape(outline, height, width)
            if not mask.any():
                continue
            h, w = mask.shape
            owner[y0 : y0 + h, x0 : x0 + w][mask] = i
            scale = obj.scale if not obj.crowd else 4.0
            center = obj.center if not obj.crowd else outline[0][0].mean(axis=0)
            member_color = color if not obj.crowd else np.clip(color + rng.normal(0, 12, 3), 0, 255)
            _paint_object(rng, canvas, y0, x0, mask, member_color, center, scale)
            box = [min(box[0], y0), max(box[1], y0 + h), min(box[2], x0), max(box[3], x0 + w)]
        boxes.append(box)
        y0, y1, x0, x1 = box
        full_areas.append(int((owner[y0:y1, x0:x1] == i).sum()) if y1 > y0 else 0)

    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(2.0, 5.0)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if rng.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))

    masks, labels, iscrowd, kept_full, dropped = [], [], [], [], 0
    for i, (obj, (y0, y1, x0, x1), full) in enumerate(zip(objects, boxes, full_areas, strict=True)):
        if full == 0:
            continue  # never in the image
        visible = owner[y0:y1, x0:x1] == i
        area = int(visible.sum())
        if area < MIN_VISIBLE_PIXELS or area < MIN_VISIBLE_FRACTION * full:
            dropped += 1
            continue
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y1, x0:x1] = visible
        masks.append(mask)
        labels.append(obj.label)
        iscrowd.append(bool(obj.crowd))
        kept_full.append(full)
    stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
    return Scene(np.asarray(image), stacked, labels, iscrowd, kept_full, dropped)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The RNG of image ``index`` of ``split``: independent of every other image."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def render_indexed(split: str, index: int, seed: int) -> Scene:
    """Image ``index`` of ``split``: fixed schedule of empty (5 %) and crowd (5 %) images."""
    rng = scene_rng(seed, split, index)
    empty = index % EMPTY_EVERY == EMPTY_AT
    num_objects = 0 if empty else int(rng.integers(1, MAX_OBJECTS + 1))
    return render_scene(rng, num_objects=num_objects, crowd=index % CROWD_EVERY == CROWD_AT)


def iter_scenes(split: str, num: int, seed: int) -> Iterator[tuple[int, Scene]]:
    """(index, scene) for index 0..num-1; reusable by other writers (e.g. Cityscapes layout)."""
    for index in range(num):
        yield index, render_indexed(split, index, seed)


# --------------------------------------------------------------------------------------
# COCO writer.
# --------------------------------------------------------------------------------------


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


def _encode_image(job: tuple[str, int, int]) -> _EncodedImage:
    """Render image ``index`` of ``split`` and encode it (runs in worker processes)."""
    split, index, seed = job
    scene = render_indexed(split, index, seed)
    height, width = scene.image.shape[:2]
    buffer = io.BytesIO()
    Image.fromarray(scene.image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
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
    return _EncodedImage(buffer.getvalue(), height, width, annotations, stats)


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


def _write_split(
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


def _coco_files(layout: str) -> CocoFiles:
    """The ``CocoFiles`` of a COCO-format layout (``coco`` or ``coco2017``)."""
    if layout == "coco2017":
        # imported here: that module builds on this one (and imports torchvision)
        from datamodules.synthetic_coco2017 import COCO2017_FILES

        return COCO2017_FILES
    return COCO_FILES


def _write_layout(
    root: Path,
    layout: str,
    num_train: int,
    num_val: int,
    seed: int,
    imap: Callable[..., Iterator],
) -> None:
    """Write the train and val splits of ``layout`` (one of ``LAYOUTS``) into ``root``."""
    if layout == "cityscapes":
        # imported here: that module builds on this one
        from datamodules.synthetic_cityscapes import write_cityscapes_split

        write_cityscapes_split(root, "train", num_train, seed, imap)
        write_cityscapes_split(root, "val", num_val, seed, imap)
        return
    files = _coco_files(layout)
    train = _write_split(root, "train", num_train, seed, 1, 1, imap, files)
    val_first_ann = train["instances"] + train["crowd"] + 1
    _write_split(root, "val", num_val, seed, num_train + 1, val_first_ann, imap, files)


# --------------------------------------------------------------------------------------
# Dataset folder: marker, reuse, atomic publish.
# --------------------------------------------------------------------------------------

MARKER = ".complete"


def _marker(num_train: int, num_val: int, seed: int) -> dict:
    return {
        "generator": "synthetic_shapes",
        "version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "seed": seed,
    }


def _is_complete(root: Path, marker: dict) -> bool:
    """True if root holds this exact dataset; False if root is absent or an empty folder.

    Raises FileExistsError if root holds anything else.
    """
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return False
    try:
        found = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        found = None
    if found == marker:
        return True
    raise FileExistsError(
        f"{root} exists but does not hold the synthetic dataset asked for "
        f"(marker {root / MARKER}: found {found}, wanted {marker}); "
        f"delete {root} or pick another root."
    )


def _default_workers(num_images: int) -> int:
    """Worker processes for ``num_images``: none for small sets (start-up costs ~1 s)."""
    if num_images < 200 or multiprocessing.current_process().daemon:
        return 0  # daemonic processes (e.g. DataLoader workers) may not have children
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, cpus or 1) if (cpus or 1) > 1 else 0


def generate_shapes(
    root: str | Path,
    num_train: int = 1000,
    num_val: int = 200,
    seed: int = 0,
    workers: int | None = None,
    layout: str = "coco",
) -> Path:
    """Write (or reuse) the synthetic COCO dataset at ``root``; returns ``root``.

    Image ids run 1..num_train (train) then num_train+1.. (val); annotation ids are unique
    across both splits. The dataset is built in a temporary folder next to root and renamed
    into place, with ``root/.complete`` written last, so an interrupted run never leaves a
    folder that looks complete. Safe to call from several processes at once (DDP ranks).

    workers: processes rendering images (0: in this process; None: by size and CPU count).
    The files are byte-identical whatever the number of workers.
    layout: one of ``LAYOUTS``: ``coco`` (this module's layout), ``coco2017`` (COCO 2017's
    folders and 80 categories) or ``cityscapes``, all holding the same scenes.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"generate_shapes: layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(root)
    for name, value in (("num_train", num_train), ("num_val", num_val), ("seed", seed)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"generate_shapes: {name} must be a non-negative int, got {value!r}")
    marker = _marker(num_train, num_val, seed)
    if layout != "coco":  # COCO folders written before layouts existed stay valid
        marker["layout"] = layout
    if _is_complete(root, marker):
        return root
    if workers is None:
        workers = _default_workers(num_train + num_val)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    # spawn, not fork: the caller may hold torch threads or CUDA state.
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 0 else None
    try:
        imap = partial(pool.imap, chunksize=4) if pool is not None else map
        tmp.mkdir()
        _write_layout(tmp, layout, num_train, num_val, seed, imap)
        (tmp / MARKER).write_text(json.dumps(marker, sort_keys=True))
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        try:
            tmp.rename(root)
        except OSError:  # another process published first
            if not _is_complete(root, marker):
                raise
    finally:
        if pool is not None:
            pool.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def dataset_stats(root: str | Path) -> dict[str, dict]:
    """Per split of a COCO-format layout, keyed by its annotation file's name without
    ``instances_`` (train, val; train2017, val2017): images, empty images, instances per area
    range, crowd, occluded, dropped."""
    out = {}
    for path in sorted((Path(root) / "annotations").glob("instances_*.json")):
        out[path.stem.removeprefix("instances_")] = json.loads(path.read_text())["info"]["stats"]
    return out


def _summary_title(root: Path, layout: str) -> str:
    """First line of the CLI summary: where the dataset is and its categories."""
    if layout == "cityscapes":
        return (
            f"synthetic shapes in the Cityscapes layout at {root} (classes: see "
            "datamodules/synthetic_cityscapes.py)"
        )
    files = _coco_files(layout)
    ids = [c["id"] for c in files.categories]
    if layout == "coco":
        return f"synthetic shapes at {root} ({len(ids)} classes, ids {ids})"
    names = {c["id"]: c["name"] for c in files.categories}
    shapes = ", ".join(
        f"{c['name']} -> {i} {names[i]}" for c, i in zip(CATEGORIES, files.shape_ids, strict=True)
    )
    return (
        f"synthetic shapes in the COCO 2017 layout at {root} ({len(ids)} COCO categories, "
        f"ids {ids[0]}..{ids[-1]}; annotated: {shapes})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="dataset folder to write (or reuse)")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="0: no worker processes")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="coco",
        help="coco: images/<split>/ and the 8 shape categories; coco2017: COCO 2017's folders "
        "and 80 categories; cityscapes: leftImg8bit/ and gtFine/",
    )
    args = parser.parse_args(argv)
    root = generate_shapes(
        args.root, args.num_train, args.num_val, args.seed, args.workers, args.layout
    )
    print(_summary_title(root, args.layout))
    if args.layout == "cityscapes":
        return
    stats = dataset_stats(root)
    width = max(map(len, stats), default=0)
    for split, s in stats.items():
        print(
            f"  {split:{width}s}: {s['images']} images ({s['empty_images']} empty), "
            f"{s['instances']} instances (small {s['small']}, medium {s['medium']}, "
            f"large {s['large']}; {s['occluded']} partly occluded), {s['crowd']} crowd "
            f"regions, {s['dropped']} dropped as (nearly) fully occluded"
        )


if __name__ == "__main__":
    main()
