"""Deformable 3x3 convolutions (DCNv1 and modulated DCNv2) in the residual stages of a
timm ResNet / ResNeXt.

The paper's strongest backbone, X-101-FPN-DCN, is a ResNeXt-101 32x8d whose bottleneck
3x3 convolutions in res3–res5 are deformable, as in detectron2's ``DeformBottleneckBlock``
with ``DEFORM_ON_PER_STAGE=[False, True, True, True]`` and ``DEFORM_NUM_GROUPS=1``. The
paper does not say DCNv1 or v2; our reading is the modulated DCNv2
(``DEFORM_MODULATED=True``) that the FCOS-family X-101 DCN recipes use, with one
deformable group: the official FCOS ``dcnv2`` config with these stages
(``STAGE_WITH_DCN: (False, True, True, True)``), the official ATSS and AdelaiDet FCOS
ones with res4–res5 and deformable head towers (not covered here). DCNv1 stays
available (``modulated=False``, ``model.backbone.deform_modulated=false``). In timm's (and
torchvision's) ResNet those stages are ``layer2``, ``layer3`` and ``layer4``;
:func:`make_deformable` swaps each block's ``conv2`` there for a :class:`DeformConv3x3`
built from it.

A :class:`DeformConv3x3` starts with the pretrained (or random) weights of the convolution it
replaces and a zero-initialised offset (and mask) predictor, so at initialisation it computes
exactly what the plain convolution computed; the offsets (and masks) are learnt from there.
DCNv2's modulation mask is ``2 * sigmoid(logits)``, 1 at the zero initialisation: a
deliberate difference from detectron2's and mmcv's ``ModulatedDeformConv``, whose
``sigmoid(logits)`` starts at 0.5 and so halves the pretrained convolution's output, where
the recipe wants the deformable network to start as the pretrained one. The mask's range
is ``(0, 2)`` rather than ``(0, 1)``.

The sampling is torchvision's :func:`torchvision.ops.deform_conv2d`. Its kernels accept
float32 / float64 (and float16 on CUDA) but not bfloat16, so for other dtypes (bf16 autocast,
bf16 weights) the deformable convolution runs in float32 and its output is returned in the
dtype a plain convolution would produce (the offset predictor's output dtype). Its CPU and
CUDA kernels compute in NCHW; a channels-last input gives a channels-last output.

Parameter names change from ``<block>.conv2.weight`` to ``<block>.conv2.conv.weight`` plus
``<block>.conv2.offset.{weight,bias}`` (with DCNv2 it predicts the mask logits too, as
detectron2's ``conv2_offset`` does): load plain ResNet weights before calling
:func:`make_deformable` (timm's ``pretrained``/``checkpoint_path`` do so at creation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import DeformConv2d, deform_conv2d

#: option name used in error messages
_OPTION = "model.backbone.deformable_layers"


class DeformConv3x3(nn.Module):
    """A deformable copy of a 3x3 ``nn.Conv2d``: same weights, stride, padding, dilation and
    groups, plus a zero-initialised offset (and, modulated, mask) predictor.

    Args:
        conv: the 3x3 convolution to replace; its weight (and bias) are copied, its
            ``requires_grad`` flags carry over to the copy and to the offset predictor.
        offset_groups: deformable groups (detectron2's ``DEFORM_NUM_GROUPS``); each group of
            ``in_channels / offset_groups`` input channels gets its own 3x3 offset field
            (and mask).
        modulated: DCNv2 (detectron2's ``DEFORM_MODULATED``): each kernel tap's sample is
            also scaled by a learnt mask ``2 * sigmoid(logits)``, 1 at initialisation (the
            module docstring says why not detectron2's ``sigmoid``). ``False``: DCNv1.

    Attributes:
        offset: ``nn.Conv2d(in, K * 3 * 3 * offset_groups, 3, stride, padding, dilation)``,
            ``K = 3`` modulated (channels ``[0, 18G)`` the offsets, ``[18G, 27G)`` the mask
            logits, detectron2's split) and ``K = 2`` otherwise, weight and bias zero at
            initialisation; predicts a (dy, dx) (and a mask logit) per kernel tap, deformable
            group and output position.
        conv: ``torchvision.ops.DeformConv2d`` holding the copied weight.
    """

    def __init__(self, conv: nn.Conv2d, offset_groups: int = 1, modulated: bool = False) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d) or tuple(conv.kernel_size) != (3, 3):
            raise ValueError(f"DeformConv3x3 needs a 3x3 nn.Conv2d, got {conv!r}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"DeformConv3x3 needs numeric zero padding, got padding={conv.padding!r}, "
                f"padding_mode={conv.padding_mode!r}"
            )
        if conv.in_channels % offset_groups:
            raise ValueError(
                f"offset_groups={offset_groups} does not divide in_channels={conv.in_channels}"
            )
        weight = conv.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.offset_groups = offset_groups
        self.modulated = bool(modulated)
        self.offset = nn.Conv2d(
            conv.in_channels,
            (3 if self.modulated else 2) * 3 * 3 * offset_groups,
            kernel_size=3,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            **factory,
        )
        self.conv = DeformConv2d(
            conv.in_channels,
            conv.out_channels,
            kernel_size=3,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        ).to(**factory)
        with torch.no_grad():
            nn.init.zeros_(self.offset.weight)
            nn.init.zeros_(self.offset.bias)
            self.conv.weight.copy_(weight)
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)
        self.offset.requires_grad_(weight.requires_grad)
        self.conv.weight.requires_grad_(weight.requires_grad)
        if conv.bias is not None:
            self.conv.bias.requires_grad_(conv.bias.requires_grad)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W'), H' and W' as for the plain convolution."""
        offset = self.offset(x)  # (B, K*9*G, H', W'), autocast dtype under autocast
        mask = None
        if self.modulated:  # (B, 27G, H', W') -> (B, 18G, H', W') offsets, (B, 9G, ..) logits
            offset, logits = offset.split([2 * 9 * self.offset_groups, 9 * self.offset_groups], 1)
            mask = 2.0 * logits.sigmoid()  # (B, 9*G, H', W'), 1 at initialisation
        weight, bias = self.conv.weight, self.conv.bias  # (C_out, C_in/groups, 3, 3), (C_out,)
        # float32 or float64: the dtypes deform_conv2d supports on every device
        dtype = torch.promote_types(weight.dtype, torch.float32)
        if x.dtype == offset.dtype == weight.dtype == dtype:
            out = self.conv(x, offset, mask)  # (B, C_out, H', W'), NCHW-contiguous
        else:
            # bfloat16 (autocast or bf16 weights): no bf16 kernel, so compute in float32 and
            # hand back the dtype a plain convolution would give (that of the offsets)
            with torch.autocast(x.device.type, enabled=False):
                out = deform_conv2d(
                    x.to(dtype),
                    offset.to(dtype),
                    weight.to(dtype),
                    None if bias is None else bias.to(dtype),
                    stride=self.conv.stride,
                    padding=self.conv.padding,
                    dilation=self.conv.dilation,
                    mask=None if mask is None else mask.to(dtype),
                )  # (B, C_out, H', W') float32/float64
            out = out.to(offset.dtype)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)  # keep the input's layout
        return out

    def extra_repr(self) -> str:
        return f"offset_groups={self.offset_groups}, modulated={self.modulated}"


def make_deformable(
    body: nn.Module,
    layers: Sequence[str] = ("layer2", "layer3", "layer4"),
    offset_groups: int = 1,
    modulated: bool = False,
) -> int:
    """Replace, in place, the ``conv2`` (3x3) of every residual block in ``layers`` of a timm
    ResNet / ResNeXt by a :class:`DeformConv3x3` built from it (``modulated``: DCNv2, else
    DCNv1); return how many were replaced.

    Works on ``timm.create_model(name)`` and on ``timm.create_model(name, features_only=True)``
    (both name their stages ``layer1``..``layer4``). The default ``layer2``–``layer4`` are
    detectron2's res3–res5. A ``conv2`` that is already deformable is left as it is and not
    counted, so calling it twice replaces nothing the second time.

    Raises:
        ValueError: a name in ``layers`` is not a child module of ``body``, or a block in
            those layers has no 3x3 ``nn.Conv2d`` ``conv2``.
    """
    if isinstance(layers, str):
        layers = (layers,)
    children = dict(body.named_children())
    stages = [n for n in children if n.startswith("layer")] or list(children)
    unknown = [name for name in layers if name not in children]
    if unknown:
        raise ValueError(
            f"{_OPTION}={list(layers)!r}: {unknown!r} not in the backbone; available: {stages!r}"
        )
    replaced = 0
    for name in layers:
        for block_name, block in children[name].named_children():
            conv = getattr(block, "conv2", None)
            if isinstance(conv, DeformConv3x3):
                continue
            if not isinstance(conv, nn.Conv2d) or tuple(conv.kernel_size) != (3, 3):
                raise ValueError(
                    f"{_OPTION}: block {name}.{block_name} ({type(block).__name__}) has no 3x3 "
                    f"nn.Conv2d conv2 (got {type(conv).__name__}); only ResNet/ResNeXt blocks "
                    "can be made deformable"
                )
            block.conv2 = DeformConv3x3(conv, offset_groups=offset_groups, modulated=modulated)
            replaced += 1
    return replaced


__all__ = ["DeformConv3x3", "make_deformable"]
