"""Mask scoring: a detection's confidence in its own mask (SOLOv2's *maskness*).

A detection's class score says how sure the detector is of the object, not of its mask.
Multiplying it by the mask's mean foreground probability ranks, among detections of equal
class score, the ones with crisp, confident masks first, which is what mask AP rewards.
"""

from __future__ import annotations

from torch import Tensor


def maskness(probs: Tensor, threshold: float = 0.5) -> Tensor:
    """``(N, S, S)`` mask probabilities -> ``(N,)`` mean probability over the pixels at or
    above ``threshold`` (the predicted mask, as pasted); 0 for a mask with no such pixel."""
    foreground = (probs >= threshold).to(probs.dtype)  # (N, S, S)
    inside = (probs * foreground).flatten(1).sum(1)  # (N,)
    return inside / foreground.flatten(1).sum(1).clamp(min=1.0)
