"""Rendering the synthetic shapes scenes: seeded images of shapes with their visible masks.

A scene is meant to be a real (small) instance-segmentation problem:

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
  shaded/textured objects, pixel noise;
- varied image sizes (sides 224..512) and aspect ratios (0.5..2), 5 % empty images,
  1..8 objects per image and, in 5 % of the images, a crowd region: a dense cluster of tiny
  objects of one class that the writers annotate as one region.

The difficulty (``GENERATOR_VERSION``) is set so that a small detector trained from scratch
on a CPU for minutes reaches a clear, non-zero AP: easy enough to learn in a short budget,
hard enough to tell recipes apart.

Every image comes from its own RNG seeded from ``(seed, split, index)`` (``scene_rng``), so
a scene is the same for the same arguments and a split can be rendered image by image
(``render_indexed``, ``iter_scenes``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# the scenes' version, recorded in every dataset written from them
GENERATOR_VERSION = 2

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
