"""Deformable 3x3 convs (X-101-FPN-DCN): identity at init, placement in layer2–4, grads, bf16."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn
from torchvision.ops import DeformConv2d

from pointins.backbones.deformable import DeformConv3x3, make_deformable

CL = torch.channels_last


def _grouped_strided_conv(bias: bool = False) -> nn.Conv2d:
    torch.manual_seed(0)
    # ResNeXt conv2 shape: groups=32, stride 2 (first block of a stage); dilation for coverage
    return nn.Conv2d(64, 64, 3, stride=2, padding=2, dilation=2, groups=32, bias=bias)


@pytest.fixture(scope="module")
def resnext_pair():
    """A features_only ResNeXt-50 32x4d (eval) and its deformable copy."""
    torch.manual_seed(0)
    # zero_init_last=False: timm zeroes every block's last BN by default, which would hide
    # the residual branches (and so the deformable convs) from the outputs
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
    x = torch.randn(2, 64, 11, 13)
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
    x = torch.randn(1, 3, 64, 64)
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
    x = torch.randn(2, 64, 11, 13).contiguous(memory_format=CL)
    out = d(x)
    (out * torch.randn_like(out)).sum().backward()
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
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_model(x), atol=1e-4, rtol=1e-4)


def test_bf16_autocast_on_cpu_runs_and_matches_fp32():
    conv = _grouped_strided_conv(bias=True)
    d = DeformConv3x3(conv)
    with torch.no_grad():
        d.offset.weight.normal_(std=0.05)  # nonzero offsets: bilinear sampling really runs
    x = torch.randn(2, 64, 11, 13).contiguous(memory_format=CL)
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
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=CL)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform(x)
        ref = plain(x)
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == b.dtype
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.float(), b.float(), atol=0.05, rtol=0.05)
