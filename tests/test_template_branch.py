"""TemplateBranch: the point-wise gather equals the dense conv read at the same points;
BoxTemplateBranch reads each template cell under its box cell, on the query's level."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from pointins.mask.instance_aware_mask import InstanceAwareMask
from pointins.mask.template_branch import (
    BoxTemplateBranch,
    TemplateBranch,
    gather_patches,
    read_from_finer_level,
    vector_to_template,
)
from pointins.structures import InstanceQueries

SHAPES = [(7, 9), (4, 5), (2, 3)]  # (H_l, W_l) per level
STRIDES = [8.0, 16.0, 32.0]


def make_features(channels: int, num_images: int = 2, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(num_images, channels, h, w, generator=gen, dtype=torch.float64)
        for h, w in SHAPES
    ]


def make_queries(num_images: int = 2, seed: int = 0) -> InstanceQueries:
    """Every corner and border midpoint of every level and image, plus random points,
    shuffled so that levels and images are interleaved."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for level, (h, w) in enumerate(SHAPES):
        for b in range(num_images):
            points = {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, 0), (0, w // 2)}
            for _ in range(4):
                y = int(torch.randint(h, (1,), generator=gen))
                x = int(torch.randint(w, (1,), generator=gen))
                points.add((y, x))
            rows += [(b, level, y, x) for y, x in sorted(points)]
    rows.append(rows[3])  # the same point twice
    table = torch.tensor(rows)[torch.randperm(len(rows), generator=gen)]  # (N, 4)
    num = table.shape[0]
    stride = torch.tensor(STRIDES, dtype=torch.float64)[table[:, 1]]
    box = torch.tensor([0.0, 0.0, 8.0, 8.0], dtype=torch.float64).expand(num, 4)
    return InstanceQueries(
        batch_idx=table[:, 0],
        level=table[:, 1],
        yx=table[:, 2:4],
        stride=stride,
        anchors=box.clone(),
        target_boxes=box.clone(),
    )


def dense_reference(branch: TemplateBranch, features, queries) -> torch.Tensor:
    """Run the conv densely on every level and read it at the query points: (N, E*K*K)."""
    conv = branch.conv
    dense = [F.conv2d(f, conv.weight, conv.bias, padding=conv.padding) for f in features]
    rows = [
        dense[int(lvl)][int(b), :, int(y), int(x)]
        for b, lvl, (y, x) in zip(queries.batch_idx, queries.level, queries.yx, strict=True)
    ]
    return torch.stack(rows)  # (N, E*K*K)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_gathered_template_equals_dense_conv(kernel_size: int) -> None:
    torch.manual_seed(0)
    channels, E, K = 6, 4, 3
    branch = TemplateBranch(channels, E=E, K=K, kernel_size=kernel_size).double()
    torch.nn.init.normal_(branch.conv.weight)
    torch.nn.init.normal_(branch.conv.bias)
    features = make_features(channels)
    queries = make_queries()

    out = branch(features, queries)
    expected = dense_reference(branch, features, queries)  # (N, E*K*K)
    assert out.shape == (len(queries), E, K, K)
    # E fastest: vector element (i*K + j)*E + e is channel e at (i, j)
    expected = expected.reshape(-1, K, K, E).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_gradients_equal_dense_conv(kernel_size: int) -> None:
    torch.manual_seed(1)
    channels, E, K = 5, 2, 2
    branch = TemplateBranch(channels, E=E, K=K, kernel_size=kernel_size).double()
    torch.nn.init.normal_(branch.conv.weight)
    queries = make_queries(seed=3)
    upstream = torch.randn(len(queries), E * K * K, dtype=torch.float64)

    feats_a = [f.requires_grad_() for f in make_features(channels, seed=2)]
    out = branch(feats_a, queries).permute(0, 2, 3, 1).reshape(len(queries), -1)
    (out * upstream).sum().backward()
    grads_a = [f.grad.clone() for f in feats_a]
    weight_grad_a = branch.conv.weight.grad.clone()
    branch.zero_grad()

    feats_b = [f.requires_grad_() for f in make_features(channels, seed=2)]
    (dense_reference(branch, feats_b, queries) * upstream).sum().backward()
    for ga, fb in zip(grads_a, feats_b, strict=True):
        torch.testing.assert_close(ga, fb.grad)
    torch.testing.assert_close(weight_grad_a, branch.conv.weight.grad)


def test_reshape_order_e_fastest_on_hand_made_weight() -> None:
    E, K = 3, 4
    branch = TemplateBranch(2, E=E, K=K, kernel_size=3)
    with torch.no_grad():
        branch.conv.weight.zero_()
        branch.conv.bias.copy_(torch.arange(E * K * K, dtype=torch.float32))
    features = [torch.randn(1, 2, 5, 5)]
    queries = InstanceQueries(
        batch_idx=torch.tensor([0]),
        level=torch.tensor([0]),
        yx=torch.tensor([[2, 2]]),
        stride=torch.tensor([8.0]),
        anchors=torch.zeros(1, 4),
        target_boxes=torch.zeros(1, 4),
    )
    out = branch(features, queries)[0]  # (E, K, K)
    for e in range(E):
        for i in range(K):
            for j in range(K):
                assert out[e, i, j] == (i * K + j) * E + e
    # the first E entries are the upper-left location
    assert out[:, 0, 0].tolist() == list(range(E))
    torch.testing.assert_close(
        vector_to_template(torch.arange(E * K * K).view(1, -1), E, K)[0], out.long()
    )


def test_gather_patches_layout() -> None:
    """Patch layout is (dy, dx, F) with F fastest and zeros outside the map."""
    feat = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)  # (B, F, H, W)
    queries = InstanceQueries(
        batch_idx=torch.tensor([0]),
        level=torch.tensor([0]),
        yx=torch.tensor([[0, 3]]),  # top-right corner
        stride=torch.tensor([8.0]),
        anchors=torch.zeros(1, 4),
        target_boxes=torch.zeros(1, 4),
    )
    patch = gather_patches([feat], queries, 3).view(3, 3, 2)  # (dy, dx, F)
    assert patch[0].abs().sum() == 0  # row above the map
    assert patch[:, 2].abs().sum() == 0  # column right of the map
    torch.testing.assert_close(patch[1, 1], feat[0, :, 0, 3])
    torch.testing.assert_close(patch[2, 0], feat[0, :, 1, 2])


def test_empty_queries_keep_the_graph() -> None:
    branch = TemplateBranch(4, E=2, K=3, kernel_size=3)
    features = [torch.randn(2, 4, 5, 5), torch.randn(2, 4, 3, 3)]
    queries = make_queries()[torch.zeros(0, dtype=torch.long)]
    out = branch(features, queries)
    assert out.shape == (0, 2, 3, 3)
    assert out.grad_fn is not None
    out.sum().backward()
    assert branch.conv.weight.grad is not None


def test_bad_kernel_size_raises() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        TemplateBranch(8, E=4, K=4, kernel_size=2)


def test_init_and_parameters_are_a_conv() -> None:
    branch = TemplateBranch(256, E=9, K=16, kernel_size=3)
    assert branch.conv.weight.shape == (9 * 16 * 16, 256, 3, 3)
    assert torch.count_nonzero(branch.conv.bias) == 0
    assert abs(branch.conv.weight.std().item() - 0.01) < 1e-3


def test_finer_level_read_hand_computed() -> None:
    """A query two levels coarser than ``max_level`` reads the finer map under the centre of
    its own cell: (y + 0.5) * 4 floored; positions past the finer map clamp to its edge;
    queries at or below ``max_level`` keep their place."""
    features = make_features(4)
    queries = make_queries()
    rows = torch.tensor([[0, 2, 1, 2], [1, 1, 3, 4], [0, 0, 6, 8], [1, 2, 1, 2]])
    q = replace(queries[:4], batch_idx=rows[:, 0], level=rows[:, 1], yx=rows[:, 2:])
    moved = read_from_finer_level(features, q, 0)
    assert moved.level.tolist() == [0, 0, 0, 0]
    # level 2 (1, 2) -> (6, 10), clamped to P3's 7 x 9 map: (6, 8); level 1 (3, 4) -> (7, 9)
    # -> (6, 8)
    assert moved.yx.tolist() == [[6, 8], [6, 8], [6, 8], [6, 8]]
    half = read_from_finer_level(features, q, 1)
    assert half.level.tolist() == [1, 1, 0, 1] and half.yx.tolist() == [
        [3, 4],
        [3, 4],
        [6, 8],
        [3, 4],
    ]
    assert torch.equal(read_from_finer_level(features, q, 2).yx, q.yx)  # nothing coarser


def test_finer_level_template_is_the_template_read_there() -> None:
    features = make_features(4)
    queries = make_queries()
    branch = TemplateBranch(4, E=2, K=2, kernel_size=3, max_level=0).double()
    own = TemplateBranch(4, E=2, K=2, kernel_size=3).double()
    own.load_state_dict(branch.state_dict())  # same parameters: max_level adds none
    expected = own(features, read_from_finer_level(features, queries, 0))
    assert torch.equal(branch(features, queries), expected)
    assert not torch.equal(own(features, queries), expected)


def test_box_template_cell_reads_the_features_under_its_box_cell() -> None:
    """``template_from=box``: template cell ``(i, j)`` is the conv of the query's own level
    RoI-aligned at cell ``(i, j)`` of its box. On maps whose one channel is the column's
    x coordinate (in pixels, at each level's stride) and a 1x1 identity conv, cell ``j``
    reads the box's ``j``-th column centre, whatever the level."""
    K = 4
    features = []
    for (h, w), stride in zip(SHAPES, STRIDES, strict=True):
        x = (torch.arange(w, dtype=torch.float64) + 0.5) * stride  # pixel x of column centres
        image = 100.0 * torch.arange(2, dtype=torch.float64).view(2, 1, 1, 1)  # 0 or 100
        features.append(x.expand(2, 1, h, w) + image)
    branch = BoxTemplateBranch(1, E=1, K=K, kernel_size=1).double()
    with torch.no_grad():
        branch.conv.weight.fill_(1.0)
    boxes = torch.tensor([[20.0, 8.0, 52.0, 40.0], [12.0, 16.0, 60.0, 48.0]], dtype=torch.float64)
    for level in (0, 1):
        q = InstanceQueries(
            batch_idx=torch.tensor([0, 1]),
            level=torch.tensor([level, level]),
            yx=torch.tensor([[1, 1], [1, 2]]),
            stride=torch.tensor([STRIDES[level]] * 2),
            anchors=boxes,
            target_boxes=boxes,
        )
        templates = branch(features, q)  # (2, 1, K, K)
        width = boxes[:, 2] - boxes[:, 0]
        centres = boxes[:, :1] + (torch.arange(K) + 0.5) * width[:, None] / K  # (2, K)
        centres = centres + 100.0 * q.batch_idx[:, None]  # each query reads its own image
        torch.testing.assert_close(templates[:, 0], centres[:, None, :].expand(2, K, K))


def test_box_template_reads_only_its_own_level() -> None:
    image = 10.0 * torch.arange(2.0).view(2, 1, 1, 1)  # image b adds 10 b
    features = [
        (level + image).expand(2, 1, h, w).contiguous() for level, (h, w) in enumerate(SHAPES)
    ]
    branch = BoxTemplateBranch(1, E=1, K=2, kernel_size=1)
    with torch.no_grad():
        branch.conv.weight.fill_(1.0)
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0]]).expand(3, 4)
    q = InstanceQueries(
        batch_idx=torch.tensor([0, 1, 0]),
        level=torch.tensor([2, 0, 1]),
        yx=torch.zeros(3, 2, dtype=torch.long),
        stride=torch.tensor([32.0, 8.0, 16.0]),
        anchors=box,
        target_boxes=box,
    )
    # the box lies inside every level's map (aligned bilinear samples read the level value)
    assert branch(features, q).flatten(1).mean(1).tolist() == [2.0, 10.0, 1.0]


def test_box_templates_equal_a_roi_align_per_query() -> None:
    """Levels, images and boxes mixed: each template is its own image's template map on its
    own level, RoI-aligned over its own box, as a query read alone would be."""
    features = make_features(4)
    queries = make_queries()
    gen = torch.Generator().manual_seed(1)
    corner = torch.rand(len(queries), 2, generator=gen, dtype=torch.float64) * 40
    size = 4 + torch.rand(len(queries), 2, generator=gen, dtype=torch.float64) * 40
    queries = replace(queries, target_boxes=torch.cat([corner, corner + size], 1))  # (N, 4)
    branch = BoxTemplateBranch(4, E=2, K=3, kernel_size=3).double()
    maps = [branch.conv(f) for f in features]  # per level (B, E, H_l, W_l)
    expected = torch.stack(
        [
            roi_align(maps[int(lvl)][int(b)][None], [box[None] / s], 3, 1.0, 1, aligned=True)[0]
            for b, lvl, box, s in zip(
                queries.batch_idx, queries.level, queries.target_boxes, queries.stride, strict=True
            )
        ]
    )  # (N, E, K, K)
    torch.testing.assert_close(branch(features, queries), expected)


def test_box_templates_have_no_finer_level_read() -> None:
    with pytest.raises(ValueError, match="template_max_level.*template_from=box"):
        InstanceAwareMask(16, K=4, template_from="box", template_max_level=0)
    with pytest.raises(ValueError, match="template_from 'roi'"):
        InstanceAwareMask(16, K=4, template_from="roi")
