"""Box coders: round trips, hand values, broadcasting, clamping."""

from __future__ import annotations

import math

import torch

from pointins.detectors.box_coders import DeltaBoxCoder, LTRBBoxCoder


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 500
    wh = torch.rand(n, 2, generator=generator) * 300 + 10  # size ratios < exp(scale_clamp)
    return torch.cat([xy, xy + wh], dim=1)


def test_delta_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    anchors, boxes = _random_boxes(1000, gen), _random_boxes(1000, gen)
    for coder in (DeltaBoxCoder(), DeltaBoxCoder(weights=(10.0, 10.0, 5.0, 5.0))):
        rel = coder.encode(anchors, boxes)
        torch.testing.assert_close(coder.decode(anchors, rel), boxes, rtol=1e-4, atol=1e-3)


def test_ltrb_round_trip() -> None:
    gen = torch.Generator().manual_seed(1)
    boxes = _random_boxes(1000, gen)
    stride = 16.0
    centres = boxes[:, :2] + torch.rand(1000, 2, generator=gen) * (boxes[:, 2:] - boxes[:, :2])
    cells = torch.cat([centres - stride / 2, centres + stride / 2], dim=1)
    coder = LTRBBoxCoder()
    rel = coder.encode(cells, boxes)
    assert torch.all(rel >= 0)  # centres inside the boxes
    torch.testing.assert_close(coder.decode(cells, rel), boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(coder.encode(cells, coder.decode(cells, rel)), rel)


def test_delta_hand_values() -> None:
    anchor = torch.tensor([0.0, 0.0, 10.0, 10.0])  # centre (5, 5), 10 x 10
    box = torch.tensor([5.0, 5.0, 25.0, 15.0])  # centre (15, 10), 20 x 10
    rel = DeltaBoxCoder().encode(anchor, box)
    torch.testing.assert_close(rel, torch.tensor([1.0, 0.5, math.log(2.0), 0.0]))
    rel_w = DeltaBoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).encode(anchor, box)
    torch.testing.assert_close(rel_w, torch.tensor([10.0, 5.0, 5 * math.log(2.0), 0.0]))


def test_ltrb_hand_values() -> None:
    cell = torch.tensor([8.0, 8.0, 16.0, 16.0])  # location (12, 12), stride 8
    box = torch.tensor([4.0, 0.0, 20.0, 28.0])
    rel = LTRBBoxCoder().encode(cell, box)
    torch.testing.assert_close(rel, torch.tensor([1.0, 1.5, 1.0, 2.0]))


def test_broadcast_over_batch() -> None:
    gen = torch.Generator().manual_seed(2)
    anchors = _random_boxes(50, gen)  # (N, 4)
    rel = torch.randn(3, 50, 4, generator=gen) * 0.5  # (B, N, 4)
    for coder in (DeltaBoxCoder(), LTRBBoxCoder()):
        out = coder.decode(anchors, rel.abs() if isinstance(coder, LTRBBoxCoder) else rel)
        assert out.shape == (3, 50, 4)
        per_image = coder.decode(
            anchors, (rel.abs() if isinstance(coder, LTRBBoxCoder) else rel)[1]
        )
        torch.testing.assert_close(out[1], per_image)


def test_delta_decode_clamps_scale() -> None:
    anchor = torch.tensor([0.0, 0.0, 16.0, 16.0])
    out = DeltaBoxCoder().decode(anchor, torch.tensor([0.0, 0.0, 100.0, 100.0]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[2] - out[0], torch.tensor(1000.0))
