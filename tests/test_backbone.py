"""Backbone: C3–C5 strides/widths from timm, freezing rules, offline weights handling."""

from __future__ import annotations

import pytest
import timm
import torch
from torchvision.ops.misc import FrozenBatchNorm2d as TvFrozenBN

from pointins.backbones import TimmBackbone
from pointins.backbones.timm_backbone import count_trainable


def test_features_are_c3_c5():
    b = TimmBackbone("resnet18")
    feats = b(torch.randn(1, 3, 64, 96))
    assert b.strides == [8, 16, 32]
    assert [f.shape[1] for f in feats] == b.out_channels == [128, 256, 512]
    assert [tuple(f.shape[-2:]) for f in feats] == [(8, 12), (4, 6), (2, 3)]


def test_from_scratch_uses_trainable_group_norm_and_freezes_nothing():
    b = TimmBackbone("resnet18")
    assert b.norm == "gn"
    assert isinstance(b.body.bn1, torch.nn.GroupNorm)
    assert all(p.requires_grad for p in b.parameters())


def _frozen_bn_types():
    from timm.layers.norm_act import FrozenBatchNorm2d as TimmFrozenBN

    return (TimmFrozenBN, TvFrozenBN)


def test_local_checkpoint_loads_with_frozen_bn_and_frozen_stem_stage1(tmp_path):
    ref = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        ref.conv1.weight.fill_(0.5)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    b = TimmBackbone("resnet18", checkpoint_path=str(path), frozen_stages=1)
    assert torch.equal(b.body.conv1.weight, ref.conv1.weight)
    assert b.norm == "frozen_bn"
    assert isinstance(b.body.bn1, _frozen_bn_types())
    assert not any(p.requires_grad for p in b.body.conv1.parameters())
    assert not any(p.requires_grad for p in b.body.layer1.parameters())
    assert all(p.requires_grad for p in b.body.layer2.parameters())
    assert count_trainable(b) < sum(p.numel() for p in b.parameters())


def test_missing_checkpoint_file_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone.checkpoint_path"):
        TimmBackbone("resnet18", checkpoint_path=str(tmp_path / "nope.pth"))


def test_unknown_backbone_and_norm_are_clear_errors():
    with pytest.raises(ValueError, match="backbone.name"):
        TimmBackbone("resnet_does_not_exist")
    with pytest.raises(ValueError, match="backbone.norm"):
        TimmBackbone("resnet18", norm="layernorm")


def test_frozen_bn_without_weights_freezes_stages_for_init_from():
    """norm=frozen_bn with random weights here means a checkpoint loads them afterwards
    (model.init_from, the Cityscapes recipes): stem and stage 1 freeze as with loaded ones."""
    b = TimmBackbone("resnet18", norm="frozen_bn", frozen_stages=1)
    assert not any(p.requires_grad for p in b.body.conv1.parameters())
    assert not any(p.requires_grad for p in b.body.layer1.parameters())
    assert all(p.requires_grad for p in b.body.layer2.parameters())


def test_deformable_layers_start_from_the_loaded_weights(tmp_path):
    """backbone=x101_dcn's mechanism: ImageNet weights load into the plain convs, which then
    become deformable with zero offsets, so the network starts as the pretrained one."""
    ref = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    plain = TimmBackbone("resnet18.tv_in1k", checkpoint_path=str(path)).eval()
    dcn = TimmBackbone(
        "resnet18.tv_in1k", checkpoint_path=str(path), deformable_layers=["layer3", "layer4"]
    ).eval()
    assert torch.equal(dcn.body.layer3[0].conv2.conv.weight, ref.layer3[0].conv2.weight)
    assert isinstance(dcn.body.layer2[0].conv2, torch.nn.Conv2d)  # not in the list
    images = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        for a, b in zip(plain(images), dcn(images), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert dcn.body.layer4[1].conv2.offset.weight.requires_grad
