"""A timm ``features_only`` backbone giving C3–C5, with the detectors' freezing rules.

Pretrained backbones follow detectron2/torchvision: BatchNorm frozen (affine +
running statistics become constants) and the stem plus the first ``frozen_stages``
residual stages frozen. From-scratch backbones need trainable normalisation; at the
small per-device batches of detection, GroupNorm is the one that works
(``norm=gn``), plain BatchNorm is available for large batches (``norm=bn``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import timm
from timm.layers.norm_act import freeze_batch_norm_2d
from timm.models import get_pretrained_cfg, load_state_dict
from torch import Tensor, nn

from pointins.backbones.deformable import make_deformable
from pointins.backbones.pretrained import resolve_weights

log = logging.getLogger(__name__)

Norm = Literal["auto", "frozen_bn", "bn", "gn"]
# timm module names of the stem and of the residual stages, in order.
_STEM = ("conv1", "bn1")
_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _group_norm(num_channels: int, **_: object) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, num_channels), num_channels)


class TimmBackbone(nn.Module):
    """ResNet / ResNeXt from timm returning the feature maps at strides 8, 16, 32.

    Args:
        name: timm model name with its weights tag (``resnet50.tv_in1k``: torchvision's
            ImageNet weights, the ones detection work starts from).
        out_indices: timm feature indices; (2, 3, 4) are C3, C4, C5 for ResNets.
        pretrained: load the ImageNet weights of ``name`` from timm's cache, or download
            them (see :mod:`pointins.backbones.pretrained`).
        checkpoint_path: load weights from this local file instead (a torchvision or timm
            ResNet state dict); implies ``pretrained``.
        norm: ``auto`` (``frozen_bn`` when weights are loaded, ``gn`` from scratch),
            ``frozen_bn``, ``bn`` or ``gn``.
        frozen_stages: with loaded weights, freeze the stem and this many residual stages
            (0 = stem only, -1 = nothing). Weights count as loaded when they come from
            ``pretrained``/``checkpoint_path`` or, with ``norm=frozen_bn`` and random
            weights here, from a checkpoint loaded afterwards (``model.init_from``, or a
            trained PointINS checkpoint). Random weights trained from scratch are never frozen.
        deformable_layers: timm stages whose 3×3 convs become deformable (DCN, offsets
            initialised to zero), e.g. ``[layer2, layer3, layer4]`` (res3–res5); replaced
            after the weights load, so ImageNet files load unchanged.
        deform_modulated: those convs are modulated (DCNv2, detectron2's
            ``DEFORM_MODULATED``; mask ``2·sigmoid``, 1 at initialisation), else DCNv1
            (see :mod:`pointins.backbones.deformable`).
    """

    def __init__(
        self,
        name: str = "resnet50.tv_in1k",
        out_indices: tuple[int, ...] = (2, 3, 4),
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        norm: Norm = "auto",
        frozen_stages: int = 1,
        deformable_layers: Sequence[str] = (),
        deform_modulated: bool = False,
    ) -> None:
        super().__init__()
        if norm not in ("auto", "frozen_bn", "bn", "gn"):
            raise ValueError(f"model.backbone.norm={norm!r}: choose one of auto, frozen_bn, bn, gn")
        if not timm.is_model(name):
            raise ValueError(
                f"model.backbone.name={name!r} is not a timm model (see timm.list_models())"
            )
        weights = resolve_weights(name, pretrained, checkpoint_path)
        if norm == "auto":
            norm = "frozen_bn" if weights is not None else "gn"
        kwargs: dict = {"features_only": True, "out_indices": tuple(out_indices)}
        if norm == "gn":
            kwargs["norm_layer"] = _group_norm
        self.body = _create(name, weights, kwargs)
        if norm == "frozen_bn":
            self.body = freeze_batch_norm_2d(self.body)
        if deformable_layers:
            make_deformable(self.body, list(deformable_layers), modulated=deform_modulated)
        if weights is not None or norm == "frozen_bn":  # frozen BN: weights come from a checkpoint
            self._freeze(frozen_stages)
        elif frozen_stages >= 0:
            log.info(
                "backbone: random initialisation, so no stage is frozen "
                "(model.backbone.frozen_stages=%d applies to loaded weights)",
                frozen_stages,
            )
        self.norm = norm
        self.out_channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())

    def _freeze(self, frozen_stages: int) -> None:
        if frozen_stages < 0:
            return
        names = _STEM + _STAGES[:frozen_stages]
        for module_name in names:
            module = getattr(self.body, module_name, None)
            if module is None:
                raise ValueError(
                    f"model.backbone.frozen_stages={frozen_stages}: the timm model has no "
                    f"module {module_name!r}; set frozen_stages=-1 for non-ResNet backbones"
                )
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> [C3 (B, c3, H/8, W/8), C4 (.., H/16, ..), C5 (.., H/32, ..)]."""
        return self.body(images)


def _create(name: str, weights: Path | None, kwargs: dict) -> nn.Module:
    if weights is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    log.info("Loading backbone weights for %s from %s", name, weights)
    # timm's reader: safetensors or torch files, under state_dict/model or bare, DDP and
    # torch.compile prefixes removed
    state = load_state_dict(str(weights))
    try:
        body = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs
        )
    except RuntimeError as err:  # load_state_dict(strict=True): keys or shapes differ
        raise _not_these_weights(weights, name, str(err).splitlines()[0]) from err
    _check_every_tensor_loaded(body, state, weights, name)
    return body


def _check_every_tensor_loaded(body: nn.Module, state: dict, weights: Path, name: str) -> None:
    """Every tensor of the features model came from the file, and the file has nothing
    else but the classifier a features model drops (timm's features_only load is lenient)."""
    cfg = get_pretrained_cfg(name)
    classifier = f"{cfg.classifier if cfg is not None else 'fc'}."
    own = body.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    reshaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    unused = [k for k in state if k not in own and not k.startswith(classifier)]
    if missing or reshaped or unused:
        detail = "; ".join(
            f"{what}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("other shape", reshaped), ("unused", unused))
            if keys
        )
        raise _not_these_weights(weights, name, detail)


def _not_these_weights(weights: Path, name: str, detail: str) -> ValueError:
    return ValueError(
        f"{weights} does not hold {name}'s weights ({detail}); "
        "model.backbone.checkpoint_path takes a torchvision or timm state dict of the "
        "architecture model.backbone.name names"
    )


def count_trainable(module: nn.Module) -> int:
    """Number of trainable parameters (used in logs and tests)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["TimmBackbone", "count_trainable"]
