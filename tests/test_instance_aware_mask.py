"""InstanceAwareMask end to end: shapes, gradients, empty batches, option errors."""

from __future__ import annotations

import pytest
import torch

from pointins.mask.instance_aware_mask import InstanceAwareMask
from pointins.structures import InstanceQueries

SMALL = dict(in_channels=16, K=8, E=4, kernel_size=3, mask_dim=32)
STRIDES = (8.0, 16.0)


def make_inputs(num: int, channels: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = [
        torch.randn(2, channels, 10, 12, generator=gen).requires_grad_(),
        torch.randn(2, channels, 5, 6, generator=gen).requires_grad_(),
    ]
    level = torch.randint(2, (num,), generator=gen)
    stride = torch.tensor(STRIDES)[level]
    hw = torch.tensor([[10, 12], [5, 6]])[level]  # (N, 2)
    yx = (torch.rand(num, 2, generator=gen) * hw).long()
    centre = (yx.flip(1).float() + 0.5) * stride[:, None]  # (N, 2) x, y in pixels
    size = 4 * stride[:, None] * torch.tensor([[1.0, 2.0]])  # anchors 4s x 8s
    anchors = torch.cat([centre - size / 2, centre + size / 2], dim=1)  # (N, 4)
    jitter = torch.randn(num, 4, generator=gen) * stride[:, None]
    queries = InstanceQueries(
        batch_idx=torch.randint(2, (num,), generator=gen),
        level=level,
        yx=yx,
        stride=stride,
        anchors=anchors,
        target_boxes=anchors + jitter,
    )
    return features, queries


def grads_of(module: InstanceAwareMask) -> dict[str, torch.Tensor | None]:
    return {
        "template": module.template_branch.conv.weight.grad,
        "generator": module.weight_branch.generator[0].weight.grad,
        "head": module.head.layers[-1].weight.grad,
        "head_first": module.head.layers[0].weight.grad,
    }


@pytest.mark.parametrize("template_from", ["point", "box"])
@pytest.mark.parametrize("fusion", ["conv1x1", "conv3x3", "add", "concat"])
def test_forward_backward_reaches_every_branch(fusion: str, template_from: str) -> None:
    torch.manual_seed(0)
    module = InstanceAwareMask(**SMALL, fusion=fusion, template_from=template_from)
    features, queries = make_inputs(6)
    logits = module(features, queries)
    assert logits.shape == (6, 16, 16) and module.mask_size == 16
    torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.rand_like(logits).round()
    ).backward()
    for name, grad in grads_of(module).items():
        assert grad is not None and grad.abs().sum() > 0, name
    assert features[0].grad.abs().sum() > 0 and features[1].grad.abs().sum() > 0


def test_default_configuration_runs() -> None:
    torch.manual_seed(0)
    module = InstanceAwareMask()
    assert module.weight_branch.iz_dim == 10
    assert module.weight_branch.out_dim == 9 * 256
    assert module.template_branch.conv.out_channels == 9 * 16 * 16
    features, queries = make_inputs(3, channels=256)
    logits = module(features, queries)
    assert logits.shape == (3, 32, 32)
    logits.sum().backward()
    assert module.template_branch.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("template_from", ["point", "box"])
@pytest.mark.parametrize("fusion", ["conv1x1", "conv3x3", "add", "concat"])
def test_empty_batch_forward_backward(fusion: str, template_from: str) -> None:
    module = InstanceAwareMask(**SMALL, fusion=fusion, template_from=template_from)
    features, queries = make_inputs(4)
    empty = queries[torch.zeros(0, dtype=torch.long)]
    logits = module(features, empty)
    assert logits.shape == (0, 16, 16)
    assert logits.grad_fn is not None
    logits.sum().backward()
    for name, grad in grads_of(module).items():
        assert grad is not None and grad.abs().sum() == 0, name


def test_empty_batch_goes_around_the_compiled_head() -> None:
    graphs = []

    def backend(graph, example_inputs):  # records each graph torch.compile would build
        graphs.append(example_inputs[0].shape if example_inputs else None)
        return graph.forward

    torch._dynamo.reset()
    module = InstanceAwareMask(**SMALL).to(memory_format=torch.channels_last)
    module.head.compile(backend=backend, dynamic=True)
    features, queries = make_inputs(4)
    module(features, queries[torch.zeros(0, dtype=torch.long)]).sum().backward()
    assert graphs == []  # the empty batch ran eagerly
    module(features, queries).sum().backward()
    assert len(graphs) == 1  # a non-empty one through the compiled head
    torch._dynamo.reset()


@pytest.mark.parametrize("template_from", ["point", "box"])
def test_rows_are_independent_and_in_query_order(template_from: str) -> None:
    torch.manual_seed(0)
    module = InstanceAwareMask(**SMALL, template_from=template_from).eval()
    features, queries = make_inputs(9)
    with torch.no_grad():
        full = module(features, queries)
        perm = torch.tensor([8, 2, 5, 0])
        torch.testing.assert_close(module(features, queries[perm]), full[perm])


@pytest.mark.parametrize(
    ("kwargs", "iz_dim"),
    [
        ({"anchor_shape": True}, 10),
        ({"anchor_shape": False}, 7),
        ({"iz_parts": []}, 16),
        ({"iz_parts": ["io", "boundary"]}, 8),
        ({"iz_parts": "offset+boundary", "anchor_shape": False}, 6),
        ({"iz_design": "feature"}, 16),
        ({"iz_design": "fpn_offset"}, 8),
    ],
)
def test_iz_options(kwargs, iz_dim: int) -> None:
    module = InstanceAwareMask(**SMALL, **kwargs)
    assert module.weight_branch.iz_dim == iz_dim
    assert module.weight_branch.generator[0].in_features == iz_dim
    features, queries = make_inputs(3)
    assert module(features, queries).shape == (3, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fusion": "foo"}, "unknown fusion 'foo'; choose one of conv1x1, conv3x3, add, concat"),
        ({"generator": "mlp"}, "unknown generator 'mlp'; choose one of fc_relu, fc, 2fc_relu"),
        ({"iz_design": "exp"}, "unknown iz_design 'exp'; choose one of default, feature"),
        ({"iz_parts": ["io", "size"]}, "unknown Iz part"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"E": 0}, "E must be"),
    ],
)
def test_unknown_options_raise_naming_the_option(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InstanceAwareMask(**{**SMALL, **kwargs})
