"""The bench's Mask R-CNN trains its RoI heads on as many RoIs as in real training (512
sampled per image, up to 128 positive), and the bench can say how many each model used."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from tiny import TINY_MODEL

from benchmarks.roi_work import (
    POINTINS_AS_TRAINED,
    JitteredGTProposals,
    RoICounter,
    feed_like_real_training,
)
from pointins.baselines import TorchvisionDetector, build_torchvision
from pointins.model import build_model

SMALL = ["experiment=shapes", *TINY_MODEL]


def _batch():
    """Two 128x128 images with three square objects each, boxes and masks."""
    images = torch.randn(2, 3, 128, 128)
    targets = []
    for offset in (0, 8):
        boxes = torch.tensor([[8.0, 8, 48, 48], [60, 20, 120, 70], [20, 70, 70, 120]]) + offset
        boxes = boxes.clamp(max=127)
        masks = torch.zeros(3, 128, 128, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist(), strict=True):
            m[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.tensor([0, 1, 2]), "masks": masks})
    return images, [(128, 128)] * 2, targets


def _maskrcnn(compose_cfg):
    model = OmegaConf.to_container(compose_cfg(SMALL).model, resolve=True)
    net = build_torchvision("maskrcnn", model["backbone"], model["neck"], model["detector"], 8)
    return TorchvisionDetector("maskrcnn", net).train()


def test_jittered_gt_proposals_fill_the_roi_sampler(compose_cfg):
    torch.manual_seed(0)
    images, sizes, targets = _batch()
    plain = _maskrcnn(compose_cfg)
    plain_count = RoICounter(plain)
    plain.losses(images, sizes, targets)
    fed = _maskrcnn(compose_cfg)
    feed_like_real_training(fed)
    feed_like_real_training(fed)  # once is enough: not wrapped twice
    assert isinstance(fed.net.rpn, JitteredGTProposals)
    assert not isinstance(fed.net.rpn.rpn, JitteredGTProposals)
    counter = RoICounter(fed)
    losses = fed.losses(images, sizes, targets)
    assert all(torch.isfinite(v) for v in losses.values()) and "loss_mask" in losses
    summary = counter.summary()
    assert summary["sampled_rois_per_image"] == [512, 512]
    assert summary["mask_rois_per_image"] == [128, 128]  # 25 % of 512, the sampler's cap
    assert max(plain_count.summary()["mask_rois_per_image"]) < 128  # what random weights give


def _pointins_masks(compose_cfg, extra: list[str]) -> list[int]:
    model = OmegaConf.to_container(compose_cfg([*SMALL, *extra]).model, resolve=True)
    net = build_model(model["backbone"], model["neck"], model["detector"], model["mask"], 8)
    counter = RoICounter(net)
    images, _, targets = _batch()
    torch.manual_seed(0)
    net.train().losses(images, targets)
    assert "sampled_rois_per_image" not in counter.summary()
    return counter.summary()["mask_rois_per_image"]


def test_pointins_as_trained_samples_every_qualifying_anchor(compose_cfg):
    """With random weights few regressed boxes overlap their GT, so few anchors become mask
    samples; with GT target boxes every qualifying anchor does, up to N = 128 per image."""
    random_weights = _pointins_masks(compose_cfg, [])
    as_trained = _pointins_masks(compose_cfg, POINTINS_AS_TRAINED)
    assert len(as_trained) == 2 and all(0 < m <= 128 for m in as_trained)
    assert sum(as_trained) > sum(random_weights)
