"""Instance-aware convolution and T7 fusions against per-sample references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pointins.mask.dynamic_conv import (
    AddFusion,
    ConcatFusion,
    DynamicConvFusion,
    build_fusion,
)

N, E, K, B = 5, 4, 6, 7


def inputs(weight_dim: int, num: int = N, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn(num, E, K, K, generator=gen, dtype=torch.float64)
    weights = torch.randn(num, weight_dim, generator=gen, dtype=torch.float64)
    return templates, weights


@pytest.mark.parametrize(("name", "kernel"), [("conv1x1", 1), ("conv3x3", 3)])
def test_batched_dynamic_conv_equals_per_sample_conv(name: str, kernel: int) -> None:
    fusion = build_fusion(name, E, K, B)
    assert isinstance(fusion, DynamicConvFusion)
    assert fusion.weight_dim == E * B * kernel * kernel and fusion.out_channels == B
    templates, weights = inputs(fusion.weight_dim)
    out = fusion(templates, weights)
    # paper §3.2: F^w reshaped to (B, E, √D, √D) is the conv weight of sample n
    expected = torch.cat(
        [
            F.conv2d(
                templates[n : n + 1], weights[n].view(B, E, kernel, kernel), padding=kernel // 2
            )
            for n in range(N)
        ]
    )
    assert out.shape == (N, B, K, K)
    torch.testing.assert_close(out, expected)


def test_conv1x1_is_a_pixelwise_matrix_product() -> None:
    fusion = build_fusion("conv1x1", E, K, B)
    templates, weights = inputs(fusion.weight_dim)
    out = fusion(templates, weights)
    n, b, i, j = 3, 2, 4, 1
    manual = sum(weights[n, b * E + e] * templates[n, e, i, j] for e in range(E))
    torch.testing.assert_close(out[n, b, i, j], manual)


def test_add_fusion_reshapes_weights_like_the_template() -> None:
    fusion = build_fusion("add", E, K, B)
    assert isinstance(fusion, AddFusion)
    assert fusion.weight_dim == E * K * K and fusion.out_channels == E
    templates = torch.zeros(2, E, K, K, dtype=torch.float64)
    weights = torch.arange(2 * E * K * K, dtype=torch.float64).view(2, -1)
    out = fusion(templates, weights)
    assert out.shape == (2, E, K, K)
    # E fastest, as for the template: element (i*K + j)*E + e is channel e at (i, j)
    for n, e, i, j in [(0, 0, 0, 0), (0, 3, 0, 0), (1, 2, 5, 1), (1, 1, 2, 4)]:
        assert out[n, e, i, j] == n * E * K * K + (i * K + j) * E + e
    templates, weights = inputs(fusion.weight_dim)
    expected = weights.view(N, K, K, E).permute(0, 3, 1, 2)  # (N, E, K, K)
    torch.testing.assert_close(fusion(templates, weights) - templates, expected)


def test_concat_fusion() -> None:
    fusion = build_fusion("concat", E, K, B)
    assert isinstance(fusion, ConcatFusion)
    assert fusion.weight_dim == E * K * K and fusion.out_channels == 2 * E
    templates, weights = inputs(fusion.weight_dim)
    out = fusion(templates, weights)
    assert out.shape == (N, 2 * E, K, K)
    torch.testing.assert_close(out[:, :E], templates)
    torch.testing.assert_close(out[:, E:], weights.view(N, K, K, E).permute(0, 3, 1, 2))


@pytest.mark.parametrize("name", ["conv1x1", "conv3x3", "add", "concat"])
def test_empty_batch_keeps_the_graph(name: str) -> None:
    fusion = build_fusion(name, E, K, B)
    templates, weights = inputs(fusion.weight_dim, num=0)
    templates.requires_grad_()
    weights.requires_grad_()
    out = fusion(templates, weights)
    assert out.shape == (0, fusion.out_channels, K, K)
    assert out.grad_fn is not None
    out.sum().backward()
    assert templates.grad is not None and weights.grad is not None


@pytest.mark.parametrize("name", ["conv1x1", "conv3x3", "add", "concat"])
def test_gradients_reach_both_inputs(name: str) -> None:
    fusion = build_fusion(name, E, K, B)
    templates, weights = inputs(fusion.weight_dim)
    templates.requires_grad_()
    weights.requires_grad_()
    fusion(templates, weights).square().sum().backward()
    assert templates.grad.abs().sum() > 0 and weights.grad.abs().sum() > 0


def test_wrong_template_shape_and_unknown_fusion_raise() -> None:
    fusion = build_fusion("conv1x1", E, K, B)
    with pytest.raises(ValueError, match="templates"):
        fusion(torch.zeros(2, E + 1, K, K), torch.zeros(2, fusion.weight_dim))
    with pytest.raises(
        ValueError, match="unknown fusion 'foo'; choose one of conv1x1, conv3x3, add, concat"
    ):
        build_fusion("foo", E, K, B)
    with pytest.raises(ValueError, match="kernel_size"):
        DynamicConvFusion(E, K, B, kernel_size=2)
