"""Pasting box-relative masks into the image (paper §4.1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image

from pointins.mask.paste import _paste_chunk, paste_masks


def _smooth_masks(num: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Blurred random blobs: ``(num, size, size)`` probabilities with smooth boundaries."""
    coarse = torch.rand(num, 1, 4, 4, generator=g)
    up = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disk = (1 - (xx**2 + yy**2)).clamp(min=0)  # keeps the object inside the box
    return (up[:, 0] * disk * 2).clamp(0, 1)


def _random_boxes(num: int, height: int, width: int, g: torch.Generator) -> torch.Tensor:
    wh = 30 + torch.rand(num, 2, generator=g) * 90
    xy = torch.rand(num, 2, generator=g) * torch.tensor([width, height]) - wh / 4
    return torch.cat([xy, xy + wh], dim=1)  # some boxes stick out of the image


def _boundary_band(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels within ``radius`` px (Chebyshev) of a foreground/background change."""
    m = mask.float()[:, None]
    k = 2 * radius + 1
    grown = F.max_pool2d(m, k, stride=1, padding=radius)
    shrunk = -F.max_pool2d(-m, k, stride=1, padding=radius)
    return (grown != shrunk)[:, 0]


def test_matches_torchvision_paste() -> None:
    g = torch.Generator().manual_seed(0)
    height, width, num = 150, 170, 24
    masks = _smooth_masks(num, 32, g)
    boxes = _random_boxes(num, height, width, g)
    ours = paste_masks(masks, boxes, (height, width))
    ref = paste_masks_in_image(masks[:, None], boxes, (height, width))[:, 0] >= 0.5
    assert ours.shape == (num, height, width) and ours.dtype == torch.bool
    inter = (ours & ref).flatten(1).sum(1).float()
    union = (ours | ref).flatten(1).sum(1).float()
    keep = union > 50  # instances with a visible object
    assert keep.sum() >= num // 2
    assert ((inter / union.clamp(min=1))[keep] > 0.9).all()
    assert (inter.sum() / union.sum()) > 0.95
    # every disagreement lies within ~1 px of the boundary (torchvision rounds boxes to ints)
    band = _boundary_band(ours, 2)
    assert not ((ours ^ ref) & ~band).any()


@pytest.mark.parametrize("chunk_size", [1, 5, 100])
def test_chunking_does_not_change_the_result(chunk_size: int) -> None:
    g = torch.Generator().manual_seed(1)
    masks = _smooth_masks(11, 16, g)
    boxes = _random_boxes(11, 90, 120, g)
    full = paste_masks(masks, boxes, (90, 120), chunk_size=1000)
    assert torch.equal(paste_masks(masks, boxes, (90, 120), chunk_size=chunk_size), full)


def test_ones_fill_exactly_the_box() -> None:
    height, width = 40, 50
    boxes = torch.tensor(
        [
            [10.0, 5.0, 30.0, 25.0],  # integer box: exactly pixels 10..29 x 5..24
            [-8.0, -4.0, 12.0, 9.0],  # sticks out top-left
            [40.0, 30.0, 70.0, 60.0],  # sticks out bottom-right
            [60.0, 45.0, 80.0, 70.0],  # entirely outside
        ]
    )
    out = paste_masks(torch.ones(4, 28, 28), boxes, (height, width))
    expected = torch.zeros(4, height, width, dtype=torch.bool)
    expected[0, 5:25, 10:30] = True
    expected[1, 0:9, 0:12] = True
    expected[2, 30:40, 40:50] = True
    assert torch.equal(out, expected)


def test_float_boxes_within_one_pixel() -> None:
    g = torch.Generator().manual_seed(2)
    height, width = 64, 64
    boxes = torch.rand(20, 2, generator=g) * 40
    boxes = torch.cat([boxes, boxes + 4 + torch.rand(20, 2, generator=g) * 30], dim=1)
    out = paste_masks(torch.ones(20, 14, 14), boxes, (height, width))
    ys = torch.arange(height)[None, :, None] + 0.5
    xs = torch.arange(width)[None, None, :] + 0.5
    b = boxes[:, :, None, None]
    inner = (xs > b[:, 0] + 1) & (xs < b[:, 2] - 1) & (ys > b[:, 1] + 1) & (ys < b[:, 3] - 1)
    outer = (xs > b[:, 0] - 1) & (xs < b[:, 2] + 1) & (ys > b[:, 1] - 1) & (ys < b[:, 3] + 1)
    assert (out | ~inner).all() and not (out & ~outer).any()


def test_threshold_and_empty() -> None:
    masks = torch.full((2, 8, 8), 0.4)
    boxes = torch.tensor([[2.0, 2.0, 10.0, 10.0], [0.0, 0.0, 5.0, 5.0]])
    assert not paste_masks(masks, boxes, (12, 12)).any()
    assert paste_masks(masks, boxes, (12, 12), threshold=0.3)[0, 2:10, 2:10].all()
    empty = paste_masks(torch.zeros(0, 8, 8), torch.zeros(0, 4), (12, 12))
    assert empty.shape == (0, 12, 12) and empty.dtype == torch.bool


def test_separable_sampling_equals_grid_sample() -> None:
    """The two matrix products give ``F.grid_sample`` over the union rectangle, bilinear
    with zero padding, for boxes inside, across and outside the image's edges."""
    g = torch.Generator().manual_seed(3)
    height, width, size = 70, 90, 12
    masks = torch.rand(9, size, size, generator=g, dtype=torch.float64)
    boxes = _random_boxes(9, height, width, g).double()
    probs, y0, x0 = _paste_chunk(masks, boxes, height, width)
    h, w = probs.shape[-2:]
    img_x = torch.arange(x0, x0 + w, dtype=torch.float64) + 0.5  # (w,)
    img_y = torch.arange(y0, y0 + h, dtype=torch.float64) + 0.5  # (h,)
    gx = (img_x[None] - boxes[:, 0, None]) / (boxes[:, 2] - boxes[:, 0])[:, None] * 2 - 1
    gy = (img_y[None] - boxes[:, 1, None]) / (boxes[:, 3] - boxes[:, 1])[:, None] * 2 - 1
    grid = torch.stack(
        [gx[:, None, :].expand(9, h, w), gy[:, :, None].expand(9, h, w)], dim=3
    )  # (9, h, w, 2)
    expected = F.grid_sample(masks[:, None], grid, mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-12)
