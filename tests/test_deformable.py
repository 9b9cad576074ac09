"""Deformable 3x3 convs (X-101-FPN-DCN), DCNv1 and modulated DCNv2: identity at init,
placement in layer2–4, a hand-computed and a torchvision reference case, grads, bf16."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from torch import nn
from torchvision.ops import DeformConv2d, deform_conv2d

from pointins.backbones import TimmBackbone
from pointins.backbones.deformable import DeformConv3x3, make_deformable

CL = torch.channels_last


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _grouped_strided_conv(bias: bool = False) -> nn.Conv2d:
    # ResNeXt conv2 shape: groups=32, stride 2 (first block of a stage); dilation for coverage
    conv = nn.Conv2d(64, 64, 3, stride=2, padding=2, dilation=2, groups=32, bias=bias)
    with torch.no_grad():  # seeded weights, the global generator untouched
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=_gen(1)) * 0.1)
    return conv


@pytest.fixture(scope="module")
def resnext_pair():
    """A features_only ResNeXt-50 32x4d (eval) and its deformable copy."""
    # zero_init_last=False: timm zeroes every block's last BN by default, which would hide
    # the residual branches (and so the deformable convs) from the outputs
    with torch.random.fork_rng():  # timm initialises from the global generator
        torch.manual_seed(0)
        plain = timm.create_model(
            "resnext50_32x4d", pretrained=False, features_only=True, zero_init_last=False
        ).eval()
    deform = copy.deepcopy(plain)
    n = make_deformable(deform)
    return plain, deform, n


@pytest.mark.parametrize("bias", [False, True])
def test_single_conv_equals_plain_conv_at_init(bias):
    conv = _grouped_strided_conv(bias)
    d = DeformConv3x3(conv)
    assert isinstance(d.conv, DeformConv2d)
    assert d.conv.groups == 32 and d.conv.stride == (2, 2) and d.conv.dilation == (2, 2)
    assert d.offset.out_channels == 18 and d.offset.stride == (2, 2)
    assert not d.offset.weight.any() and not d.offset.bias.any()
    x = torch.randn(2, 64, 11, 13, generator=_gen())
    with torch.no_grad():
        ref = conv(x)
        out = d(x)
        out_cl = d.to(memory_format=CL)(x.contiguous(memory_format=CL))
    assert out.shape == ref.shape == (2, 64, 6, 7)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_cl, ref, atol=1e-5, rtol=1e-5)
    assert out_cl.is_contiguous(memory_format=CL)


def test_make_deformable_replaces_conv2_of_layer2_to_4_only(resnext_pair):
    plain, deform, n = resnext_pair
    blocks = {name: len(getattr(plain, name)) for name in ("layer1", "layer2", "layer3", "layer4")}
    assert n == blocks["layer2"] + blocks["layer3"] + blocks["layer4"] == 4 + 6 + 3
    for name in ("layer2", "layer3", "layer4"):
        for block in getattr(deform, name):
            assert isinstance(block.conv2, DeformConv3x3)
            assert block.conv2.conv.groups == 32
            assert isinstance(block.conv1, nn.Conv2d) and isinstance(block.conv3, nn.Conv2d)
    assert not any(isinstance(m, DeformConv3x3) for m in deform.layer1.modules())
    assert sum(isinstance(m, DeformConv3x3) for m in deform.modules()) == n
    assert make_deformable(deform) == 0  # already deformable: nothing more to replace


def test_make_deformable_keeps_outputs_at_init_and_uses_offsets(resnext_pair):
    plain, deform, _ = resnext_pair
    x = torch.randn(1, 3, 64, 64, generator=_gen())
    with torch.no_grad():
        ref = plain(x)
        out = deform(x)
        plain_cl = copy.deepcopy(plain).to(memory_format=CL)
        deform_cl = copy.deepcopy(deform).to(memory_format=CL)
        out_cl = deform_cl(x.contiguous(memory_format=CL))
        ref_cl = plain_cl(x.contiguous(memory_format=CL))
    assert len(out) == len(ref) == 5
    for a, b, c, d in zip(out, ref, out_cl, ref_cl, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(c, d, atol=1e-4, rtol=1e-4)

    moved = copy.deepcopy(deform)
    with torch.no_grad():
        moved.layer3[0].conv2.offset.bias.fill_(0.5)  # every tap sampled half a pixel off
        shifted = moved(x)
    for level in (0, 1, 2):  # stem, layer1, layer2: before the change
        torch.testing.assert_close(shifted[level], ref[level], atol=1e-4, rtol=1e-4)
    for level in (3, 4):  # layer3, layer4
        assert (shifted[level] - ref[level]).abs().max() > 1e-3


def test_gradients_reach_offsets_and_conv_weight():
    conv = _grouped_strided_conv(bias=True)
    d = DeformConv3x3(conv)
    x = torch.randn(2, 64, 11, 13, generator=_gen()).contiguous(memory_format=CL)
    out = d(x)
    (out * torch.randn(out.shape, generator=_gen())).sum().backward()
    for p in (d.offset.weight, d.offset.bias, d.conv.weight, d.conv.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
        assert torch.isfinite(p.grad).all()


def test_frozen_conv_gives_frozen_deformable_conv():
    conv = _grouped_strided_conv().requires_grad_(False)
    d = DeformConv3x3(conv)
    assert not any(p.requires_grad for p in d.parameters())


def test_unknown_layer_names_the_option_and_the_choices():
    model = timm.create_model("resnet18", pretrained=False)
    with pytest.raises(ValueError, match=r"model\.backbone\.deformable_layers") as err:
        make_deformable(model, ("layer2", "res5"))
    assert "res5" in str(err.value) and "layer4" in str(err.value)
    assert not any(isinstance(m, DeformConv3x3) for m in model.modules())


def test_basic_blocks_classifier_model():
    model = timm.create_model("resnet18", pretrained=False, zero_init_last=False).eval()
    ref_model = copy.deepcopy(model)
    assert make_deformable(model, ["layer4"]) == 2
    x = torch.randn(1, 3, 64, 64, generator=_gen())
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_model(x), atol=1e-4, rtol=1e-4)


def test_bf16_autocast_on_cpu_runs_and_matches_fp32():
    conv = _grouped_strided_conv(bias=True)
    d = DeformConv3x3(conv)
    with torch.no_grad():
        d.offset.weight.normal_(std=0.05)  # nonzero offsets: bilinear sampling really runs
    x = torch.randn(2, 64, 11, 13, generator=_gen()).contiguous(memory_format=CL)
    with torch.no_grad():
        ref = d(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = d(x)  # fp32 input, bf16 offsets
            half_in = d(x.bfloat16())  # bf16 input, as from a previous layer under autocast
        half_weights = copy.deepcopy(d).bfloat16()(x.bfloat16())  # bf16 weights, no autocast
    assert half.dtype == half_in.dtype == half_weights.dtype == torch.bfloat16
    assert ref.dtype == torch.float32
    for out in (half, half_in, half_weights):
        torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)

    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(x)
    out.float().sum().backward()
    assert d.offset.weight.grad.abs().sum() > 0 and d.conv.weight.grad.abs().sum() > 0


def test_bf16_autocast_whole_backbone(resnext_pair):
    plain, deform, _ = resnext_pair
    x = torch.randn(1, 3, 64, 64, generator=_gen()).contiguous(memory_format=CL)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform(x)
        ref = plain(x)
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == b.dtype
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.float(), b.float(), atol=0.05, rtol=0.05)


# ------------------------------------------------------------- modulated (DCNv2)
def _seeded_conv(seed: int, bias: bool = True) -> nn.Conv2d:
    """The ResNeXt conv2 shape of :func:`_grouped_strided_conv`, weights from a generator."""
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(64, 64, 3, stride=2, padding=2, dilation=2, groups=32, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.1)
        if bias:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen))
    return conv


@pytest.mark.parametrize("groups", [1, 4])
def test_modulated_conv_equals_plain_conv_at_init(groups):
    conv = _seeded_conv(0)
    d = DeformConv3x3(conv, offset_groups=groups, modulated=True)
    assert d.modulated and d.offset.out_channels == 3 * 9 * groups  # 18G offsets, 9G masks
    assert not d.offset.weight.any() and not d.offset.bias.any()
    x = torch.randn(2, 64, 11, 13, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = conv(x)
        out = d(x)
        out_cl = copy.deepcopy(d).to(memory_format=CL)(x.contiguous(memory_format=CL))
    assert out.dtype == torch.float32 and out.shape == ref.shape == (2, 64, 6, 7)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)  # mask 2 * sigmoid(0) = 1
    torch.testing.assert_close(out_cl, ref, atol=1e-5, rtol=1e-5)
    assert out_cl.is_contiguous(memory_format=CL)


def test_modulated_conv_by_hand():
    """Offsets of one pixel to the right for every tap and a mask of 1.5 on the centre tap
    only (2 * sigmoid(log 3); the other taps' logits -40 give ~1e-17): each output is 1.5 x
    the centre weight times the input one column to its right (zero past the border)."""
    gen = torch.Generator().manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen))
    d = DeformConv3x3(conv, modulated=True)
    with torch.no_grad():
        d.offset.bias[1:18:2] = 1.0  # (dy, dx) per tap: dx = +1
        d.offset.bias[18:] = -40.0  # mask logits per tap, row-major
        d.offset.bias[18 + 4] = math.log(3.0)  # the centre tap: 2 * 0.75
    x = torch.randn(1, 2, 5, 6, generator=gen)
    right = torch.cat([x[..., 1:], torch.zeros_like(x[..., :1])], dim=-1)  # (1, 2, 5, 6)
    centre = conv.weight[:, :, 1, 1]  # (3, 2)
    expected = 1.5 * torch.einsum("oc,bchw->bohw", centre, right) + conv.bias[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(d(x), expected, atol=1e-5, rtol=1e-5)


def test_modulated_conv_matches_torchvision_deform_conv2d():
    """Nonzero offsets and masks: the module is torchvision's deform_conv2d with the offset
    channels [0, 18G) and the mask 2 * sigmoid of channels [18G, 27G) of its predictor."""
    gen = torch.Generator().manual_seed(3)
    conv = _seeded_conv(4)
    d = DeformConv3x3(conv, offset_groups=2, modulated=True)
    with torch.no_grad():
        d.offset.weight.copy_(torch.randn(d.offset.weight.shape, generator=gen) * 0.05)
        d.offset.bias.copy_(torch.randn(d.offset.bias.shape, generator=gen))
    x = torch.randn(2, 64, 11, 13, generator=gen)
    with torch.no_grad():
        pred = d.offset(x)  # (2, 54, 6, 7)
        offset, logits = pred[:, :36], pred[:, 36:]
        assert logits.abs().max() > 0.5  # masks really differ from 1
        ref = deform_conv2d(
            x,
            offset,
            conv.weight,
            conv.bias,
            stride=(2, 2),
            padding=(2, 2),
            dilation=(2, 2),
            mask=2 * torch.sigmoid(logits),
        )
        out = d(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert (out - conv(x)).abs().max() > 1e-2  # not the plain conv any more


def test_gradients_reach_the_mask_logits():
    d = DeformConv3x3(_seeded_conv(5), modulated=True)
    x = torch.randn(2, 64, 11, 13, generator=torch.Generator().manual_seed(6))
    out = d(x)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(7))).sum().backward()
    mask_weight, mask_bias = d.offset.weight.grad[18:], d.offset.bias.grad[18:]  # 9 logits
    offset_weight = d.offset.weight.grad[:18]
    for grad in (mask_weight, mask_bias, offset_weight, d.conv.weight.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_modulated_bf16_autocast_matches_fp32():
    d = DeformConv3x3(_seeded_conv(8), modulated=True)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        d.offset.weight.copy_(torch.randn(d.offset.weight.shape, generator=gen) * 0.05)
    x = torch.randn(2, 64, 11, 13, generator=gen)
    with torch.no_grad():
        ref = d(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = d(x)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), ref, atol=0.05, rtol=0.05)


def test_make_deformable_modulated_and_the_backbone_option():
    model = timm.create_model("resnet18", pretrained=False, zero_init_last=False).eval()
    ref_model = copy.deepcopy(model)
    assert make_deformable(model, ["layer4"], modulated=True) == 2
    assert all(block.conv2.modulated for block in model.layer4)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_model(x), atol=1e-4, rtol=1e-4)

    dcn2 = TimmBackbone("resnet18", deformable_layers=["layer4"], deform_modulated=True)
    dcn1 = TimmBackbone("resnet18", deformable_layers=["layer4"])
    assert dcn2.body.layer4[0].conv2.offset.out_channels == 27
    assert dcn1.body.layer4[0].conv2.offset.out_channels == 18
    assert not dcn1.body.layer4[0].conv2.modulated
