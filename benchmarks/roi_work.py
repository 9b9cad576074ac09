"""The work the mask branches do in a benchmarked training step, made comparable.

A benchmark trains from random weights, and with random weights torchvision's RPN proposes
boxes that rarely overlap a GT box: Mask R-CNN's RoI heads would then sample few positive
RoIs (little more than the GT boxes they add themselves) and its mask head would see a
handful of masks per image, where real training feeds it up to 512 sampled RoIs per image,
a quarter of them positive (128 masks at most). PointINS has the same problem: a mask
sample is an anchor of the detector's positives whose target box (usually the regressed
box) overlaps its GT, and random weights regress boxes that do not. So Mask R-CNN's
training cases run with :class:`JitteredGTProposals`, PointINS's with the GT box as every
candidate's target box (:data:`POINTINS_AS_TRAINED`: every qualifying anchor is a sample,
up to ``N = 128`` per image; the mask module's work does not depend on which box it is
given), and :class:`RoICounter` reports per image the masks each model trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

#: PointINS's overrides in a benchmarked training step: every candidate a positive
POINTINS_AS_TRAINED = ["model.mask.sampling.target_box_probs=[0.0,1.0,0.0]"]
#: proposals made from each image's GT boxes, enough for the RoI sampler's 128 positives
JITTERED_PROPOSALS = 256
#: jitter of each box side, as a fraction of the box's width / height (uniform in ±)
JITTER = 0.1


class JitteredGTProposals(nn.Module):
    """Mask R-CNN's RPN, followed by ``JITTERED_PROPOSALS`` jittered copies of each image's
    GT boxes added to its proposals in training, as a trained RPN's proposals would cover
    the objects. The RPN itself still runs and its losses are returned: its cost is real.
    A side moved by at most ``JITTER`` of the box's size keeps most copies above the
    RoI heads' 0.5 foreground IoU, so they sample their full 512 RoIs per image with up to
    25 % positive."""

    def __init__(self, rpn: nn.Module, seed: int = 0) -> None:
        super().__init__()
        self.rpn = rpn
        self.seed = seed

    def forward(self, images, features, targets=None) -> tuple[list[Tensor], dict[str, Tensor]]:
        boxes, losses = self.rpn(images, features, targets)
        if not self.training or targets is None:
            return boxes, losses
        generator = torch.Generator(device=boxes[0].device).manual_seed(self.seed)
        out = []
        for proposals, target in zip(boxes, targets, strict=True):
            gt = target["boxes"]  # (G, 4)
            if len(gt) == 0:
                out.append(proposals)
                continue
            copies = -(-JITTERED_PROPOSALS // len(gt))
            base = gt.repeat(copies, 1)  # (copies * G, 4)
            size = (base[:, 2:] - base[:, :2]).repeat(1, 2)  # (copies * G, 4) as (w, h, w, h)
            noise = torch.rand(base.shape, generator=generator, device=base.device) * 2 - 1
            jittered = base + JITTER * noise.to(base.dtype) * size  # (copies * G, 4)
            out.append(torch.cat([jittered, proposals]))  # (copies * G + P, 4)
        return out, losses


def feed_like_real_training(model: nn.Module) -> None:
    """Give a torchvision Mask R-CNN (``model.net``) :class:`JitteredGTProposals`."""
    net = model.net
    if not isinstance(net.rpn, JitteredGTProposals):
        net.rpn = JitteredGTProposals(net.rpn)


class RoICounter:
    """Counts per image, at the last training step, the RoIs Mask R-CNN's box head pools
    (its sampled proposals) and its mask head pools (the positive ones), or the mask
    queries PointINS's mask module is given."""

    def __init__(self, model: nn.Module) -> None:
        self.sampled: list[int] | None = None
        self.masks: list[int] | None = None
        net = getattr(model, "net", None)
        if net is not None and hasattr(net, "roi_heads"):  # torchvision Mask R-CNN
            net.roi_heads.box_roi_pool.register_forward_pre_hook(self._count_sampled)
            net.roi_heads.mask_roi_pool.register_forward_pre_hook(self._count_masks)
        elif getattr(model, "mask", None) is not None:  # PointINS
            model.mask.register_forward_pre_hook(self._count_queries)

    def _count_sampled(self, module: nn.Module, args: Sequence[Any]) -> None:
        if torch.is_grad_enabled():
            self.sampled = [len(b) for b in args[1]]  # (features, proposals, image_shapes)

    def _count_masks(self, module: nn.Module, args: Sequence[Any]) -> None:
        if torch.is_grad_enabled():
            self.masks = [len(b) for b in args[1]]

    def _count_queries(self, module: nn.Module, args: Sequence[Any]) -> None:
        if torch.is_grad_enabled():
            poi_features, queries = args
            images = poi_features[0].shape[0]
            self.masks = torch.bincount(queries.batch_idx, minlength=images).tolist()

    def summary(self) -> dict[str, Any]:
        """``mask_rois_per_image`` (and Mask R-CNN's ``sampled_rois_per_image``), lists."""
        out: dict[str, Any] = {}
        if self.masks is not None:
            out["mask_rois_per_image"] = self.masks
        if self.sampled is not None:
            out["sampled_rois_per_image"] = self.sampled
        return out
