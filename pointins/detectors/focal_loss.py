"""Sigmoid focal loss over every anchor and class, at the memory of its input.

The dense detectors score every anchor against every class: ``B * N * C`` logits, 32 M of
them for RetinaNet on two 800x1333 COCO images (N ~ 200 k anchors, C = 80).
``torchvision.ops.sigmoid_focal_loss`` written with autograd keeps about eight tensors of
that size for the backward pass (the sigmoid, the cross-entropy, ``p_t``, its power, the
alpha weights and their products), plus the one-hot float targets and the masked copies
of logits and targets they are fed. That is the largest activation of a RetinaNet step.

:class:`SigmoidFocalLoss` saves only the logits (which the graph holds anyway) and the
``(B, N)`` integer labels, and recomputes the rest in the backward pass from the closed
form of the gradient, as mmcv's ``sigmoid_focal_loss`` kernel does. With ``z = s * x``,
``s = +1`` for the target class and ``-1`` otherwise, ``q = sigmoid(z)`` (``p_t``):

    loss    = -alpha_t * (1 - q)^gamma * log q
    dloss/dx = s * alpha_t * (1 - q)^gamma * (gamma * q * log q - (1 - q))

with ``alpha_t = alpha`` for the target class and ``1 - alpha`` otherwise. The arithmetic
runs in float32 for half-precision logits (as autocast runs
``binary_cross_entropy_with_logits``), in float64 for float64 ones; the gradient has the
logits' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from pointins.detectors.assigners import IGNORED


def _target_mask(labels: Tensor, num_classes: int) -> Tensor:
    """``(N,)`` labels -> ``(N, C)`` bool, True at each anchor's target class."""
    classes = torch.arange(num_classes, device=labels.device)  # (C,)
    return labels[:, None] == classes  # (N, C); background and ignored match none


def _valid(labels: Tensor) -> Tensor:
    return (labels != IGNORED)[:, None]  # (N, 1)


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _image_loss(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """Summed loss of one image's ``(N, C)`` logits; transients: three ``(N, C)`` floats."""
    target = _target_mask(labels, logits.shape[-1])  # (N, C)
    x = _at_least_fp32(logits)
    z = torch.where(target, x, -x)  # (N, C): s * x
    loss = F.logsigmoid(z)  # log q
    loss.mul_(z.neg_().sigmoid_().pow_(gamma))  # * (1 - q)^gamma, in z's memory
    del z
    loss.mul_(torch.where(target, -alpha, alpha - 1.0))  # * -alpha_t
    return loss.mul_(_valid(labels)).sum()


def _image_grad(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """d(summed loss) / d(logits) of one image, ``(N, C)`` at least float32."""
    target = _target_mask(labels, logits.shape[-1])  # (N, C)
    x = _at_least_fp32(logits)
    z = torch.where(target, x, -x)  # (N, C): s * x
    grad = F.logsigmoid(z)  # log q
    q = z.sigmoid_()  # q, in z's memory
    grad.mul_(q).mul_(gamma).add_(q).sub_(1.0)  # gamma q log q - (1 - q)
    grad.mul_(q.neg_().add_(1.0).pow_(gamma))  # * (1 - q)^gamma
    grad.mul_(torch.where(target, alpha, alpha - 1.0))  # * s * alpha_t
    return grad.mul_(_valid(labels))


class SigmoidFocalLoss(torch.autograd.Function):
    """Summed sigmoid focal loss of ``(B, N, C)`` logits against ``(B, N)`` labels.

    Image by image, so that the arithmetic's transients are those of one image's
    ``(N, C)`` scores (a loop over the batch, not over anchors).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, logits: Tensor, labels: Tensor, alpha: float, gamma: float
    ) -> Tensor:
        ctx.save_for_backward(logits, labels)
        ctx.alpha, ctx.gamma = alpha, gamma
        with torch.autocast(logits.device.type, enabled=False):
            total = _at_least_fp32(logits.new_zeros(()))
            for image_logits, image_labels in zip(logits, labels, strict=True):
                total += _image_loss(image_logits, image_labels, alpha, gamma)
            return total

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        logits, labels = ctx.saved_tensors
        grad = torch.empty_like(logits)  # (B, N, C) in the logits' dtype
        with torch.autocast(logits.device.type, enabled=False):
            for i, (image_logits, image_labels) in enumerate(zip(logits, labels, strict=True)):
                image_grad = _image_grad(image_logits, image_labels, ctx.alpha, ctx.gamma)
                grad[i] = image_grad.mul_(grad_out)  # (N, C)
        return grad, None, None, None


def sigmoid_focal_loss(
    logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Sigmoid focal loss (Lin et al.) summed over anchors and classes.

    Args:
        logits: ``(B, N, C)`` classification logits of every anchor.
        labels: ``(B, N)`` integer target class of each anchor in ``[0, C)``,
            ``BACKGROUND`` (-1: every class negative) or ``IGNORED`` (-2: left out), as in
            :mod:`pointins.detectors.assigners`.
        alpha: weight of the positive terms (``1 - alpha`` for the negatives).
        gamma: focusing exponent, ``>= 0``.

    Returns:
        A scalar (float32, or float64 for float64 logits): the sum of
        ``torchvision.ops.sigmoid_focal_loss`` over the non-ignored anchors, with one-hot
        targets.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"focal loss expects (B, N, C) logits and (B, N) labels, got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if gamma < 0:
        raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")
    return SigmoidFocalLoss.apply(logits, labels, float(alpha), float(gamma))
