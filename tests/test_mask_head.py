"""MaskHead: Mask R-CNN's mask head layout, output size and init."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pointins.mask.mask_head import MaskHead


def test_layer_sequence() -> None:
    head = MaskHead(in_channels=9, conv_dim=32, num_convs=4)
    types = [type(m) for m in head.layers]
    assert types == [nn.Conv2d, nn.ReLU] * 4 + [nn.ConvTranspose2d, nn.ReLU, nn.Conv2d]
    convs = [m for m in head.layers if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 9 and convs[0].out_channels == 32
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs[:4])
    assert all(c.in_channels == c.out_channels == 32 for c in convs[1:4])
    deconv = head.layers[8]
    assert deconv.kernel_size == (2, 2) and deconv.stride == (2, 2)
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 1
    assert len(list(MaskHead(9, 32, num_convs=2).layers)) == 7


def test_output_shape() -> None:
    head = MaskHead(in_channels=6, conv_dim=16)
    assert head(torch.randn(3, 6, 8, 8)).shape == (3, 1, 16, 16)
    empty = head(torch.zeros(0, 6, 8, 8))
    assert empty.shape == (0, 1, 16, 16) and empty.grad_fn is not None


def test_init_is_kaiming_fan_out_with_zero_bias() -> None:
    torch.manual_seed(0)
    head = MaskHead(in_channels=256, conv_dim=256)
    for m in head.layers:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            assert torch.count_nonzero(m.bias) == 0
    conv = head.layers[2]  # mask_fcn2: fan_out = 256 * 3 * 3
    expected = math.sqrt(2.0 / (256 * 9))
    assert abs(conv.weight.std().item() - expected) / expected < 0.05


def test_predictor_starts_near_zero_logits() -> None:
    """Large mask features (dynamic conv of raw Iz) must not give a huge first loss."""
    torch.manual_seed(0)
    head = MaskHead(in_channels=64, conv_dim=64)
    assert head.layers.predictor.weight.std().item() < 0.002
    logits = head(50.0 * torch.rand(4, 64, 8, 8))
    assert logits.abs().max().item() < 1.0


def test_output_scale_four_adds_one_upsampling_stage() -> None:
    """``output_scale=4``: a second 2x deconvolution (+ ReLU) before the predictor, 4K x 4K
    logits; the paper's layers keep their names, so ``output_scale=2`` checkpoints load."""
    paper, finer = MaskHead(6, 16, num_convs=2), MaskHead(6, 16, num_convs=2, output_scale=4)
    assert finer(torch.randn(3, 6, 8, 8)).shape == (3, 1, 32, 32)
    assert set(paper.state_dict()) < set(finer.state_dict())
    extra = set(finer.state_dict()) - set(paper.state_dict())
    assert extra == {"layers.deconv2.weight", "layers.deconv2.bias"}
    with pytest.raises(ValueError, match="model.mask.output_scale"):
        MaskHead(6, 16, output_scale=3)
