"""The dense head: anchor-fastest flattening, prior bias, FCOS non-negative distances,
per-anchor centre-ness, PoI features."""

from __future__ import annotations

import math

import pytest
import torch

from pointins.detectors.heads import DenseHead, num_groups


def RetinaNetHead(in_channels, num_classes, num_anchors, num_convs=4, conv_dim=256, **kw):
    """The head as conf/detector/retinanet.yaml builds it (two levels)."""
    return DenseHead(in_channels, num_classes, num_anchors, 2, num_convs, conv_dim, **kw)


def FCOSHead(in_channels, num_classes, num_levels, num_convs=4, conv_dim=256, **kw):
    """The head as conf/detector/fcos.yaml builds it."""
    return DenseHead(
        in_channels, num_classes, 1, num_levels, num_convs, conv_dim, group_norm=True,
        centerness=True, scale_per_level=True, nonnegative_regression=True, **kw,
    )  # fmt: skip


def _features():
    torch.manual_seed(0)
    return [torch.randn(2, 32, 6, 5), torch.randn(2, 32, 3, 3)]


def test_retinanet_flattening_order_is_location_major_anchor_fastest():
    head = RetinaNetHead(32, num_classes=3, num_anchors=9, num_convs=2, conv_dim=32)
    feats = _features()
    out = head(feats)
    raw = head.cls_logits(head.cls_tower(feats[0]))  # (B, A*C, H, W)
    b, y, x, a, c = 1, 4, 2, 7, 2
    w = feats[0].shape[-1]
    assert torch.equal(out.cls_logits[0][b, (y * w + x) * 9 + a, c], raw[b, a * 3 + c, y, x])
    raw_reg = head.box_regression(head.reg_tower(feats[0]))
    assert torch.equal(
        out.box_regression[0][b, (y * w + x) * 9 + a], raw_reg[b, a * 4 : (a + 1) * 4, y, x]
    )
    assert out.cls_logits[1].shape == (2, 3 * 3 * 9, 3)
    assert out.centerness is None


def test_prior_probability_bias():
    head = RetinaNetHead(32, num_classes=4, num_anchors=9, num_convs=1, conv_dim=32)
    p = torch.sigmoid(head.cls_logits.bias)
    assert torch.allclose(p, torch.full_like(p, 0.01))
    assert math.isclose(
        torch.sigmoid(FCOSHead(32, 4, 2, 1, 32).cls_logits.bias[0]).item(), 0.01, rel_tol=1e-5
    )


def test_poi_features_are_the_regression_tower_output():
    head = FCOSHead(32, num_classes=3, num_levels=2, num_convs=2, conv_dim=32)
    feats = _features()
    out = head(feats)
    for f, poi in zip(feats, out.poi_features, strict=True):
        assert torch.equal(poi, head.reg_tower(f))


def test_fcos_outputs_shapes_gn_and_non_negative_distances():
    head = FCOSHead(32, num_classes=3, num_levels=2, num_convs=2, conv_dim=32)
    assert any(isinstance(m, torch.nn.GroupNorm) for m in head.reg_tower)
    out = head(_features())
    assert out.box_regression[0].shape == (2, 30, 4) and (out.box_regression[0] >= 0).all()
    assert [c.shape for c in out.centerness] == [(2, 30), (2, 9)]
    assert len(head.scales) == 2


def test_atss_head_centerness_per_anchor_and_signed_deltas():
    """As conf/detector/atss.yaml with several anchors: one centre-ness per anchor, in the
    anchor-fastest order of the logits, and deltas that may be negative."""
    head = DenseHead(
        32, 3, num_anchors=2, num_levels=2, num_convs=1, conv_dim=32, group_norm=True,
        centerness=True, scale_per_level=True,
    )  # fmt: skip
    torch.nn.init.normal_(head.box_regression.weight, std=1.0)
    feats = _features()
    out = head(feats)
    assert [c.shape for c in out.centerness] == [(2, 30 * 2), (2, 9 * 2)]
    raw = head.centerness(head.reg_tower(feats[0]))  # (B, A, H, W)
    b, y, x, a = 1, 4, 2, 1
    assert torch.equal(out.centerness[0][b, (y * 5 + x) * 2 + a], raw[b, a, y, x])
    assert (out.box_regression[0] < 0).any()


def test_group_norm_groups_keep_two_channels_each():
    assert [num_groups(c) for c in (256, 64, 32, 48, 2)] == [32, 32, 16, 24, 1]
    # a 32-wide GN tower on the 1x1 P7 map of one small image trains (32 one-channel
    # groups would have no statistics there)
    head = FCOSHead(32, num_classes=3, num_levels=1, num_convs=2, conv_dim=32).train()
    out = head([torch.randn(1, 32, 1, 1)])
    assert torch.isfinite(out.box_regression[0]).all()


@pytest.mark.parametrize("head_cls", [RetinaNetHead, FCOSHead])
def test_predictions_are_fp32_under_bf16_autocast(head_cls):
    """Losses and box decoding get fp32 (bf16 resolves 4 px at 512 px); the PoI features
    the mask module reads stay in the autocast dtype."""
    head = head_cls(32, 3, 9 if head_cls is RetinaNetHead else 2, num_convs=1, conv_dim=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(_features())
    predictions = [*out.cls_logits, *out.box_regression, *(out.centerness or [])]
    assert all(p.dtype == torch.float32 for p in predictions)
    assert all(f.dtype == torch.bfloat16 for f in out.poi_features)


@pytest.mark.parametrize("make", [RetinaNetHead, FCOSHead], ids=["retinanet", "fcos"])
def test_checkpointed_towers_change_nothing_but_what_is_held(make):
    """``checkpoint_towers``: same outputs and gradients, same state-dict keys, and the
    backward pass holds the towers' inputs and outputs instead of every layer."""
    kwargs = {"num_convs": 3, "conv_dim": 32}
    plain = make(32, 3, 9 if make is RetinaNetHead else 2, **kwargs)
    checkpointed = make(32, 3, 9 if make is RetinaNetHead else 2, checkpoint_towers=True, **kwargs)
    checkpointed.load_state_dict(plain.state_dict())  # keys unchanged: checkpoints load
    feats = [f.requires_grad_() for f in _features()]

    def run(head):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = head(feats)
        outputs = (*out.cls_logits, *out.box_regression, *(out.centerness or []))
        loss = sum(x.square().sum() for x in outputs)
        grads = torch.autograd.grad(loss, [*head.parameters(), *feats])
        return out, grads, sum(t.numel() for t in saved)

    ref, ref_grads, ref_saved = run(plain)
    out, grads, saved = run(checkpointed)
    expected, got = (*ref.cls_logits, *ref.poi_features), (*out.cls_logits, *out.poi_features)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ref_grads, grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert saved < 0.5 * ref_saved
    with torch.no_grad():  # inference: nothing to recompute, nothing checkpointed
        assert torch.equal(checkpointed(feats).cls_logits[0], plain(feats).cls_logits[0])
