"""Mask scoring (maskness): a detection's confidence in its own mask, and rescoring."""

from __future__ import annotations

import torch

from pointins.mask.scoring import maskness
from pointins.model import rescore
from pointins.structures import Detections


def test_maskness_is_the_mean_probability_inside_the_predicted_mask() -> None:
    probs = torch.full((3, 4, 4), 0.1)
    probs[0, :2] = 0.9  # 8 pixels at 0.9
    probs[1, 0, 0], probs[1, 0, 1] = 0.6, 1.0  # two pixels, mean 0.8
    assert torch.allclose(maskness(probs), torch.tensor([0.9, 0.8, 0.0]))


def test_maskness_reads_the_mask_the_threshold_pastes() -> None:
    probs = torch.tensor([[[0.5, 0.9], [0.2, 0.1]]])  # (1, 2, 2)
    assert torch.allclose(maskness(probs, 0.5), torch.tensor([0.7]))  # 0.5 is foreground
    assert torch.allclose(maskness(probs, 0.6), torch.tensor([0.9]))


def test_rescore_multiplies_and_reorders() -> None:
    det = Detections(
        boxes=torch.arange(12.0).reshape(3, 4),
        scores=torch.tensor([0.9, 0.8, 0.7]),
        labels=torch.tensor([0, 1, 2]),
        level=torch.zeros(3, dtype=torch.long),
        yx=torch.zeros(3, 2, dtype=torch.long),
        anchor_idx=torch.zeros(3, dtype=torch.long),
        anchors=torch.zeros(3, 4),
        masks=torch.zeros(3, 2, 2),
    )
    out = rescore(det, torch.tensor([0.5, 1.0, 1.0]))
    assert out.labels.tolist() == [1, 2, 0]  # the crisp masks first
    assert torch.allclose(out.scores, torch.tensor([0.8, 0.7, 0.45]))
    assert torch.equal(out.boxes[2], torch.arange(4.0))  # rows travel together
