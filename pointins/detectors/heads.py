"""The dense head shared over FPN levels: a classification and a regression tower.

It returns a :class:`DenseOutputs`; ``poi_features`` is the last feature map
of the regression tower, the "point of interest" features PointINS reads its
templates and (optionally) Iz from. Under autocast the towers run in the autocast
dtype, and the predictions (logits, box regression, centerness) are returned in fp32:
losses and box decoding need its precision (bfloat16 resolves 4 px at 512 px).
"""

from __future__ import annotations

import math

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from pointins.structures import DenseOutputs


def num_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups for ``channels``: the most, up to ``max_groups``, that divide it
    with at least two channels each (a one-channel group has no statistics on the 1×1
    P7 map of a small image)."""
    if channels < 2:
        raise ValueError(f"GroupNorm towers need conv_dim >= 2, got {channels}")
    return max(g for g in range(1, max_groups + 1) if channels % g == 0 and channels // g >= 2)


class Tower(nn.Sequential):
    """num_convs × (conv3×3 [+ GroupNorm(32 groups, fewer below 64 channels)] + ReLU).

    With ``checkpoint``, a training forward keeps only the tower's input and output for
    the backward pass, and recomputes the layers in between there
    (``torch.utils.checkpoint``, non-reentrant). Four convolutions on P3–P7 per tower are
    the largest activations of a dense detector after the backbone, so this trades step
    time for peak memory (``make bench`` measures both; docs/benchmarks.md).
    """

    def __init__(
        self,
        in_channels: int,
        conv_dim: int,
        num_convs: int,
        group_norm: bool,
        checkpoint: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        for i in range(num_convs):
            layers.append(nn.Conv2d(in_channels if i == 0 else conv_dim, conv_dim, 3, padding=1))
            if group_norm:
                layers.append(nn.GroupNorm(num_groups(conv_dim), conv_dim))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.checkpoint = checkpoint

    def forward(self, x: Tensor) -> Tensor:
        if self.checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(super().forward, x, use_reentrant=False)
        return super().forward(x)


def _init_convs(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


def _flatten(x: Tensor, k: int) -> Tensor:
    """(B, A*k, H, W) -> (B, H*W*A, k), anchors fastest after locations."""
    b, _, h, w = x.shape
    x = x.view(b, -1, k, h, w)  # (B, A, k, H, W)
    return x.permute(0, 3, 4, 1, 2).reshape(b, -1, k)  # (B, H*W*A, k)


class Scale(nn.Module):
    """A learnable scalar per FPN level (FCOS)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class DenseHead(nn.Module):
    """The dense head of RetinaNet, FCOS and ATSS: two towers shared over the FPN levels.

    The classification tower ends in ``A * C`` logits, the regression tower in ``A * 4``
    box-coder outputs and, optionally, ``A`` centre-ness logits. What the detectors
    differ in is a handful of switches:

    ========================  =========  ====  ====
    option                    RetinaNet  FCOS  ATSS
    ========================  =========  ====  ====
    ``group_norm``            no         yes   yes
    ``centerness``            no         yes   yes
    ``scale_per_level``       no         yes   yes
    ``nonnegative_regression``  no       yes   no
    ========================  =========  ====  ====

    ``scale_per_level`` multiplies the box outputs by a learnable scalar per level (FCOS's
    ``Scale``); ``nonnegative_regression`` passes them through a ReLU (FCOS's ``(l, t, r,
    b)`` distances are non-negative). ``num_anchors`` comes from the anchor generator.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int,
        num_levels: int,
        num_convs: int = 4,
        conv_dim: int = 256,
        prior_prob: float = 0.01,
        group_norm: bool = False,
        centerness: bool = False,
        scale_per_level: bool = False,
        nonnegative_regression: bool = False,
        checkpoint_towers: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.nonnegative_regression = nonnegative_regression
        self.cls_tower = Tower(in_channels, conv_dim, num_convs, group_norm, checkpoint_towers)
        self.reg_tower = Tower(in_channels, conv_dim, num_convs, group_norm, checkpoint_towers)
        self.cls_logits = nn.Conv2d(conv_dim, num_anchors * num_classes, 3, padding=1)
        self.box_regression = nn.Conv2d(conv_dim, num_anchors * 4, 3, padding=1)
        self.centerness = nn.Conv2d(conv_dim, num_anchors, 3, padding=1) if centerness else None
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels)) if scale_per_level else None
        _init_convs(self)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        self.out_channels = conv_dim

    def forward(self, features: list[Tensor]) -> DenseOutputs:
        cls, reg, ctr, poi = [], [], [], []
        for level, x in enumerate(features):
            r = self.reg_tower(x)  # (B, F, H, W)
            cls.append(_flatten(self.cls_logits(self.cls_tower(x)).float(), self.num_classes))
            box = self.box_regression(r).float()  # (B, A*4, H, W)
            if self.scales is not None:
                box = self.scales[level](box)
            if self.nonnegative_regression:
                box = torch.relu(box)
            reg.append(_flatten(box, 4))  # (B, H*W*A, 4)
            if self.centerness is not None:
                ctr.append(_flatten(self.centerness(r).float(), 1).squeeze(-1))  # (B, H*W*A)
            poi.append(r)
        return DenseOutputs(cls, reg, ctr if self.centerness is not None else None, poi)
