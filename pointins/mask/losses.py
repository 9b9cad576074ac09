"""Mask loss (paper §3.4, Eq. 9): per-pixel BCE with the target's edges weighted 4,
optionally plus a Dice term (CondInst's mask loss), which weighs every instance alike
whatever its area, where per-pixel BCE favours the pixels of large masks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def edge_mask(targets: Tensor) -> Tensor:
    """Edge pixels of binary targets: pixels whose 3x3 neighbourhood is not all one value.

    Computed with two max-poolings (``max`` and ``-max(-t)`` = ``min`` over the 3x3 window).
    At the border the map is *replicate*-padded: a pixel outside the map takes the value of
    the nearest pixel inside, so the border itself is never an edge; only a change of
    value inside the map is. (A mask that fills its target box up to the box side therefore
    has no edge along that side: the box side is not an object boundary.)

    Args:
        targets: ``(N, S, S)`` in ``{0, 1}``.

    Returns:
        ``(N, S, S)`` bool.
    """
    if targets.numel() == 0:
        return targets.new_zeros(targets.shape, dtype=bool)
    t = targets.float()[:, None]  # (N, 1, S, S)
    t = F.pad(t, (1, 1, 1, 1), mode="replicate")  # (N, 1, S + 2, S + 2)
    local_max = F.max_pool2d(t, kernel_size=3, stride=1)  # (N, 1, S, S)
    local_min = -F.max_pool2d(-t, kernel_size=3, stride=1)  # (N, 1, S, S)
    return (local_max != local_min)[:, 0]  # (N, S, S)


def edge_weights(targets: Tensor, edge_weight: float = 4.0) -> Tensor:
    """Per-pixel loss weights: ``edge_weight`` on edge pixels (:func:`edge_mask`), 1 elsewhere.

    Args:
        targets: ``(N, S, S)`` in ``{0, 1}``.
        edge_weight: weight of an edge pixel (paper: 4).

    Returns:
        ``(N, S, S)`` float, the dtype of ``targets`` if floating else float32.
    """
    dtype = targets.dtype if targets.dtype.is_floating_point else None
    edges = edge_mask(targets).to(dtype) if dtype is not None else edge_mask(targets).float()
    return 1.0 + (edge_weight - 1.0) * edges


def dice_loss(logits: Tensor, targets: Tensor, eps: float = 1.0) -> Tensor:
    """``1 - 2 Σ p t / (Σ p² + Σ t²)`` per sample (V-Net's form, as in CondInst), averaged
    over samples; ``p = sigmoid(logits)``, sums over a sample's pixels, ``eps`` added to
    numerator and denominator so an empty target with an empty prediction costs 0.

    Args:
        logits: ``(N, S, S)``; targets: ``(N, S, S)`` in ``{0, 1}``.

    Returns:
        Scalar (``N = 0``: zero, connected to the graph).
    """
    if logits.numel() == 0:
        return logits.sum() * 0.0
    p = logits.sigmoid().flatten(1)  # (N, S*S)
    t = targets.to(p.dtype).flatten(1)  # (N, S*S)
    numerator = 2 * (p * t).sum(1) + eps  # (N,)
    denominator = p.square().sum(1) + t.square().sum(1) + eps  # (N,)
    return (1 - numerator / denominator).mean()


def mask_loss(
    logits: Tensor, targets: Tensor, edge_weight: float = 4.0, dice_weight: float = 0.0
) -> Tensor:
    """Edge-weighted binary cross-entropy, averaged over pixels and samples, plus
    ``dice_weight`` times :func:`dice_loss`.

    ``L = sum_{n,i,j} w_{nij} * BCE(logits_{nij}, targets_{nij}) / (N * S * S)`` with
    ``w`` from :func:`edge_weights` (the weights are *not* renormalised).

    Args:
        logits: ``(N, S, S)`` mask logits.
        targets: ``(N, S, S)`` in ``{0, 1}``.
        edge_weight: weight of target edge pixels.
        dice_weight: weight of the Dice term (0: the paper's loss).

    Returns:
        Scalar. With ``N = 0`` it is ``logits.sum() * 0``: zero, never NaN, and still
        connected to the graph (so DDP sees a gradient for every mask parameter).
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"losses.py: mask_loss got logits {tuple(logits.shape)} and targets "
            f"{tuple(targets.shape)}; make the mask module's output size equal mask_targets' size."
        )
    if logits.numel() == 0:
        return logits.sum() * 0.0
    targets = targets.to(logits.dtype)
    weights = edge_weights(targets, edge_weight)  # (N, S, S)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (N, S, S)
    loss = (weights * bce).sum() / logits.numel()
    if dice_weight:
        loss = loss + dice_weight * dice_loss(logits, targets)
    return loss
