"""Edge-weighted mask loss (paper §3.4) and the optional Dice term."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pointins.mask.losses import dice_loss, edge_mask, edge_weights, mask_loss


def test_edge_weights_small_square() -> None:
    t = torch.zeros(1, 6, 6)
    t[0, 2:4, 2:4] = 1  # 2x2 square in the middle
    expected = torch.ones(6, 6)
    expected[1:5, 1:5] = 4  # the square and its 8-neighbourhood ring
    assert torch.equal(edge_weights(t)[0], expected)


def test_edge_weights_border_is_replicated() -> None:
    t = torch.zeros(1, 6, 6)
    t[0, :, :3] = 1  # left half full, touching the top, bottom and left borders
    t[0, 5, 3] = 1  # and one pixel of the bottom row
    expected = torch.ones(6, 6)
    expected[:, 2:4] = 4  # the vertical boundary between columns 2 and 3
    expected[4:, 3:5] = 4  # the neighbourhood of the extra pixel (3, 5)
    # the image border itself is not an edge (replicate padding): col 0, rows 0 and 5
    assert torch.equal(edge_weights(t)[0], expected)
    # uniform maps have no edges, whatever their value
    assert torch.equal(edge_weights(torch.ones(2, 5, 5)), torch.ones(2, 5, 5))
    assert torch.equal(edge_weights(torch.zeros(2, 5, 5)), torch.ones(2, 5, 5))
    assert torch.equal(edge_weights(t, edge_weight=2.5)[0], 1 + (expected - 1) / 2)
    assert edge_mask(t).dtype == torch.bool


def test_mask_loss_hand_computation() -> None:
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 3.0]], [[1.0, -2.0], [0.5, 0.0]]])
    targets = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])

    def bce(x: float, y: float) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    # sample 0 is uniform (weight 1 everywhere); in sample 1 every 3x3 window of the
    # 2x2 map sees both values, so every pixel is an edge (weight 4)
    total = sum(bce(x, 1.0) for x in (0.0, 2.0, -1.0, 3.0))
    total += 4 * sum(bce(x, y) for x, y in ((1.0, 1), (-2.0, 0), (0.5, 0), (0.0, 1)))
    expected = total / 8
    assert math.isclose(float(mask_loss(logits, targets)), expected, rel_tol=1e-6)
    # with edge weight 1 it is the plain mean BCE
    plain = F.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(mask_loss(logits, targets, edge_weight=1.0), plain)


def test_mask_loss_gradient_and_empty() -> None:
    logits = torch.randn(3, 8, 8, requires_grad=True)
    targets = (torch.rand(3, 8, 8) > 0.5).float()
    mask_loss(logits, targets).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()

    empty = torch.randn(0, 8, 8, requires_grad=True)
    loss = mask_loss(empty * 2, torch.zeros(0, 8, 8))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert loss.grad_fn is not None
    loss.backward()
    assert empty.grad is not None and empty.grad.shape == (0, 8, 8)


def test_dice_loss_hand_computation() -> None:
    """Per sample 1 - (2 Σpt + 1) / (Σp² + Σt² + 1), averaged over samples."""
    targets = torch.zeros(2, 2, 2)
    targets[0, 0] = 1.0  # two foreground pixels
    logits = torch.zeros(2, 2, 2)  # p = 0.5 everywhere
    # sample 0: 2*(0.5+0.5)+1 = 3 over 4*0.25 + 2 + 1 = 4 -> 0.25; sample 1: 1 / (1 + 1) -> 0.5
    assert math.isclose(dice_loss(logits, targets).item(), (0.25 + 0.5) / 2, rel_tol=1e-6)
    confident = torch.where(targets > 0, 20.0, -20.0)
    assert dice_loss(confident, targets).item() < 1e-6  # a perfect mask costs nothing
    empty = dice_loss(torch.zeros(0, 4, 4, requires_grad=True), torch.zeros(0, 4, 4))
    assert empty.item() == 0.0 and empty.grad_fn is not None


def test_dice_weight_adds_the_dice_term() -> None:
    logits = torch.randn(3, 8, 8)
    targets = (torch.rand(3, 8, 8) > 0.5).float()
    paper = mask_loss(logits, targets, 4.0)
    assert torch.equal(mask_loss(logits, targets, 4.0, dice_weight=0.0), paper)
    combined = mask_loss(logits, targets, 4.0, dice_weight=2.0)
    torch.testing.assert_close(combined, paper + 2.0 * dice_loss(logits, targets))
