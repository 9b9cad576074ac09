"""Anchor and point generators: counts, sizes, centres, order, cache."""

from __future__ import annotations

import math

import pytest
import torch

from pointins.detectors.anchors import AnchorGenerator, PointGenerator

STRIDES = (8, 16, 32, 64, 128)
# a 64 x 96 input: P3..P7 grids (ceil division, as the FPN's stride-2 convs give)
SIZES_64x96 = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]


def test_feature_sizes_fixture_matches_image() -> None:
    assert SIZES_64x96 == [(math.ceil(64 / s), math.ceil(96 / s)) for s in STRIDES]


def test_retinanet_counts_per_level() -> None:
    gen = AnchorGenerator(STRIDES)
    assert gen.num_anchors == 9
    anchors = gen(SIZES_64x96, "cpu")
    assert [a.shape[0] for a in anchors] == [864, 216, 54, 18, 9]
    assert all(a.shape[1] == 4 and a.dtype == torch.float32 for a in anchors)


def test_retinanet_sizes_ratios_and_order() -> None:
    gen = AnchorGenerator(STRIDES)
    anchors = gen(SIZES_64x96, "cpu")
    for level, stride in enumerate(STRIDES):
        cell = anchors[level][:9]  # the 9 anchors of location (0, 0)
        w = cell[:, 2] - cell[:, 0]
        h = cell[:, 3] - cell[:, 1]
        for scale_i in range(3):
            for ratio_i, ratio in enumerate((0.5, 1.0, 2.0)):
                a = scale_i * 3 + ratio_i
                size = 4 * stride * 2 ** (scale_i / 3)
                assert float(w[a] * h[a]) == pytest.approx(size**2, rel=1e-5)
                assert float(h[a] / w[a]) == pytest.approx(ratio, rel=1e-5)


def test_retinanet_hand_checked_anchor() -> None:
    """Level P4 (stride 16), location (y=1, x=2), anchor scale 1, ratio 0.5."""
    gen = AnchorGenerator(STRIDES)
    anchors = gen(SIZES_64x96, "cpu")[1]
    width = 6
    flat = (1 * width + 2) * 9 + (1 * 3 + 0)
    cx, cy = (2 + 0.5) * 16, (1 + 0.5) * 16  # (40, 24)
    size = 4 * 16 * 2 ** (1 / 3)
    w, h = size / math.sqrt(0.5), size * math.sqrt(0.5)
    expected = torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    torch.testing.assert_close(anchors[flat], expected)


def test_centres_row_major_anchor_fastest() -> None:
    gen = AnchorGenerator(STRIDES)
    for level, (h, w) in enumerate(SIZES_64x96):
        anchors = gen(SIZES_64x96, "cpu")[level].reshape(h, w, 9, 4)  # (H, W, A, 4)
        centres = (anchors[..., :2] + anchors[..., 2:]) / 2  # (H, W, A, 2)
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        expected = torch.stack([xs, ys], dim=-1).float().add(0.5).mul(STRIDES[level])
        torch.testing.assert_close(centres, expected[:, :, None, :].expand_as(centres))


def test_point_generator_cells() -> None:
    gen = PointGenerator(STRIDES)
    assert gen.num_anchors == 1
    points = gen(SIZES_64x96, "cpu")
    assert [p.shape[0] for p in points] == [96, 24, 6, 2, 1]
    # level P3, location (y=3, x=5): the 8 x 8 cell centred on (44, 28)
    torch.testing.assert_close(points[0][3 * 12 + 5], torch.tensor([40.0, 24.0, 48.0, 32.0]))
    for level, stride in enumerate(STRIDES):
        w = points[level][:, 2] - points[level][:, 0]
        h = points[level][:, 3] - points[level][:, 1]
        assert torch.all(w == stride) and torch.all(h == stride)


def test_cache_returns_same_tensors() -> None:
    gen = AnchorGenerator(STRIDES)
    first = gen(SIZES_64x96, "cpu")
    second = gen(SIZES_64x96, torch.device("cpu"))
    assert all(a is b for a, b in zip(first, second, strict=True))
    other_dtype = gen(SIZES_64x96, "cpu", torch.float64)
    assert other_dtype[0].dtype == torch.float64 and other_dtype[0] is not first[0]
    other_size = gen([(2, 2)] * 5, "cpu")
    assert other_size[0].shape[0] == 36
    first.pop()  # mutating the returned list must not corrupt the cache
    assert len(gen(SIZES_64x96, "cpu")) == 5


def test_level_ids_follow_the_concatenated_levels() -> None:
    for gen in (AnchorGenerator(STRIDES), PointGenerator(STRIDES)):
        ids = gen.level_ids(SIZES_64x96)
        counts = [h * w * gen.num_anchors for h, w in SIZES_64x96]
        assert ids.shape == (sum(counts),)
        assert torch.bincount(ids).tolist() == counts
        assert torch.all(ids[1:] >= ids[:-1])


def test_wrong_number_of_levels_raises() -> None:
    with pytest.raises(ValueError, match="strides"):
        AnchorGenerator(STRIDES)([(8, 12)], "cpu")
