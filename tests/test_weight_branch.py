"""Iz (paper §3.2, T4, T5) against hand computations; weight generators (T6)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pointins.mask.weight_branch import (
    WeightBranch,
    WeightGenerator,
    build_iz,
    iz_dim,
    iz_from_feature,
    parse_iz_parts,
)
from pointins.structures import InstanceQueries

# Two hand-made RetinaNet (anchor, target box) pairs, boxes xyxy.
# 1) stride 8, anchor (0,0,32,64): x_o=16, y_o=32, height u_o=64, width v_o=32;
#    target (4,8,44,48): x_q=24, y_q=28, u_q=40, v_q=40.
#    Io = [1/8, 64/32, 64/8, 32/8] = [0.125, 2, 8, 4]
#    r_x = (24-16)/8 = 1, r_y = (28-32)/8 = -0.5
#    p_l = 0.5*40/8 - 1 = 1.5, p_r = 3.5, p_t = 2.5 + 0.5 = 3, p_b = 2
# 2) stride 16, anchor (100,50,164,82): x_o=132, y_o=66, u_o=32, v_o=64;
#    target (120,40,200,100): x_q=160, y_q=70, u_q=60, v_q=80.
#    Io = [1/16, 0.5, 2, 4]; r_x = 28/16 = 1.75, r_y = 4/16 = 0.25
#    p_l = 2.5 - 1.75 = 0.75, p_r = 4.25, p_t = 1.875 - 0.25 = 1.625, p_b = 2.125
RETINA_ANCHORS = [[0.0, 0.0, 32.0, 64.0], [100.0, 50.0, 164.0, 82.0]]
RETINA_TARGETS = [[4.0, 8.0, 44.0, 48.0], [120.0, 40.0, 200.0, 100.0]]
RETINA_STRIDES = [8.0, 16.0]
RETINA_IZ = [
    [0.125, 2.0, 8.0, 4.0, 1.0, -0.5, 1.5, 3.5, 3.0, 2.0],
    [0.0625, 0.5, 2.0, 4.0, 1.75, 0.25, 0.75, 4.25, 1.625, 2.125],
]
# FCOS: the "anchor" is the stride x stride cell of the location (Io = [1/s]).
# stride 8, cell (16,8,24,16): x_o=20, y_o=12; target (0,0,40,30): x_q=20, y_q=15, u=30, v=40
#    r_x = 0, r_y = 3/8 = 0.375, p_l = p_r = 2.5, p_t = 1.875 - 0.375 = 1.5, p_b = 2.25
FCOS_ANCHORS = [[16.0, 8.0, 24.0, 16.0]]
FCOS_TARGETS = [[0.0, 0.0, 40.0, 30.0]]
FCOS_IZ = [[0.125, 0.0, 0.375, 2.5, 2.5, 1.5, 2.25]]
COLUMNS = {"io": [0, 1, 2, 3], "offset": [4, 5], "boundary": [6, 7, 8, 9]}


def make_queries(anchors, targets, strides, yx=None) -> InstanceQueries:
    num = len(anchors)
    return InstanceQueries(
        batch_idx=torch.arange(num) % 2,
        level=torch.zeros(num, dtype=torch.long),
        yx=torch.tensor(yx) if yx is not None else torch.zeros(num, 2, dtype=torch.long),
        stride=torch.tensor(strides),
        anchors=torch.tensor(anchors),
        target_boxes=torch.tensor(targets),
    )


def retina_queries() -> InstanceQueries:
    return make_queries(RETINA_ANCHORS, RETINA_TARGETS, RETINA_STRIDES, yx=[[1, 2], [3, 0]])


def test_retinanet_iz_matches_hand_computation() -> None:
    iz = build_iz(retina_queries(), anchor_shape=True)
    assert iz.shape == (2, 10)
    assert iz_dim(anchor_shape=True) == 10
    torch.testing.assert_close(iz, torch.tensor(RETINA_IZ))


def test_fcos_iz_matches_hand_computation() -> None:
    queries = make_queries(FCOS_ANCHORS, FCOS_TARGETS, [8.0])
    iz = build_iz(queries, anchor_shape=False)
    assert iz.shape == (1, 7)
    assert iz_dim(anchor_shape=False) == 7
    torch.testing.assert_close(iz, torch.tensor(FCOS_IZ))


SUBSETS = [
    subset
    for r in range(1, 4)
    for subset in itertools.combinations(("io", "offset", "boundary"), r)
]


@pytest.mark.parametrize("subset", SUBSETS)
def test_each_t4_subset_selects_its_columns(subset: tuple[str, ...]) -> None:
    columns = [c for name in subset for c in COLUMNS[name]]
    iz = build_iz(retina_queries(), parts=subset, anchor_shape=True)
    assert iz_dim(subset, anchor_shape=True) == len(columns) == iz.shape[1]
    torch.testing.assert_close(iz, torch.tensor(RETINA_IZ)[:, columns])
    # FCOS: Io is the single column 1/s
    fcos_columns = [0] * ("io" in subset) + [c - 3 for c in columns if c >= 4]
    fcos = build_iz(make_queries(FCOS_ANCHORS, FCOS_TARGETS, [8.0]), subset, anchor_shape=False)
    assert iz_dim(subset, anchor_shape=False) == len(fcos_columns) == fcos.shape[1]
    torch.testing.assert_close(fcos, torch.tensor(FCOS_IZ)[:, fcos_columns])


def feature_fixture(channels: int = 5):
    gen = torch.Generator().manual_seed(0)
    features = [torch.randn(2, channels, 4, 3, generator=gen)]
    queries = retina_queries()
    expected = torch.stack([features[0][0, :, 1, 2], features[0][1, :, 3, 0]])  # (N, F)
    return features, queries, expected


@pytest.mark.parametrize(
    ("parts", "design"), [([], "default"), ("none", "default"), (("io",), "feature")]
)
def test_feature_iz_is_the_poi_vector(parts, design) -> None:
    features, queries, expected = feature_fixture()
    assert iz_from_feature(parts, design)
    assert iz_dim(parts, design, in_channels=5) == 5
    iz = build_iz(queries, parts, design, poi_features=features)
    torch.testing.assert_close(iz, expected)
    with pytest.raises(ValueError, match="poi_features"):
        build_iz(queries, parts, design)


def test_fpn_offset_design() -> None:
    iz = build_iz(retina_queries(), design="fpn_offset", anchor_shape=True)
    # pair 1: dx = (24-16)/32, dy = (28-32)/64, log(40/32), log(40/64)
    # pair 2: dx = 28/64, dy = 4/32, log(80/64), log(60/32)
    expected = torch.tensor(
        [
            [0.125, 2.0, 8.0, 4.0, 0.25, -0.0625, math.log(1.25), math.log(0.625)],
            [0.0625, 0.5, 2.0, 4.0, 0.4375, 0.125, math.log(1.25), math.log(1.875)],
        ]
    )
    assert iz_dim(design="fpn_offset", anchor_shape=True) == 8
    torch.testing.assert_close(iz, expected)
    # FCOS: relative to the 8x8 cell: dx = 0, dy = 3/8, log(40/8), log(30/8)
    fcos = build_iz(
        make_queries(FCOS_ANCHORS, FCOS_TARGETS, [8.0]), design="fpn_offset", anchor_shape=False
    )
    assert iz_dim(design="fpn_offset", anchor_shape=False) == 5
    torch.testing.assert_close(
        fcos, torch.tensor([[0.125, 0.0, 0.375, math.log(5.0), math.log(3.75)]])
    )


def test_log_io_design() -> None:
    iz = build_iz(retina_queries(), design="log_io", anchor_shape=True)
    expected = torch.tensor(RETINA_IZ)
    expected[:, :4] = expected[:, :4].log()
    assert iz_dim(design="log_io") == 10
    torch.testing.assert_close(iz, expected)
    fcos = build_iz(
        make_queries(FCOS_ANCHORS, FCOS_TARGETS, [8.0]), design="log_io", anchor_shape=False
    )
    expected_fcos = torch.tensor(FCOS_IZ)
    expected_fcos[:, 0] = math.log(0.125)
    torch.testing.assert_close(fcos, expected_fcos)


@pytest.mark.parametrize(("design", "fn"), [("sigmoid", torch.sigmoid), ("tanh", torch.tanh)])
def test_squashing_designs(design, fn) -> None:
    iz = build_iz(retina_queries(), design=design, anchor_shape=True)
    assert iz_dim(design=design) == 10
    torch.testing.assert_close(iz, fn(torch.tensor(RETINA_IZ)))


def test_parts_parsing() -> None:
    assert parse_iz_parts(["boundary", "io"]) == ("io", "boundary")
    assert parse_iz_parts("offset+io") == ("io", "offset")
    assert parse_iz_parts("") == () == parse_iz_parts([])
    with pytest.raises(ValueError, match="iz_parts"):
        parse_iz_parts(["io", "corners"])
    with pytest.raises(ValueError, match="unknown iz_design 'exp'"):
        iz_dim(design="exp")


def test_iz_does_not_backpropagate_into_boxes() -> None:
    queries = retina_queries()
    queries.target_boxes.requires_grad_()
    queries.anchors.requires_grad_()
    assert not build_iz(queries).requires_grad


def test_degenerate_target_box_stays_finite() -> None:
    queries = make_queries([[0.0, 0.0, 32.0, 32.0]], [[10.0, 10.0, 10.0, 20.0]], [8.0])
    for design in ("default", "fpn_offset", "log_io"):
        assert torch.isfinite(build_iz(queries, design=design)).all()


@pytest.mark.parametrize(
    ("structure", "layers"),
    [
        ("fc_relu", [torch.nn.Linear, torch.nn.ReLU]),
        ("fc", [torch.nn.Linear]),
        ("2fc_relu", [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear, torch.nn.ReLU]),
        ("fc_relu_fc", [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]),
    ],
)
def test_generator_structures(structure, layers) -> None:
    gen = WeightGenerator(10, 36, structure)
    assert [type(m) for m in gen] == layers
    linears = [m for m in gen if isinstance(m, torch.nn.Linear)]
    assert linears[0].in_features == 10 and linears[-1].out_features == 36
    if len(linears) == 2:
        assert linears[0].out_features == 36 == linears[1].in_features  # hidden = out_dim
    assert WeightGenerator(10, 36, structure, hidden_dim=7)[0].out_features == (
        7 if len(linears) == 2 else 36
    )
    torch.manual_seed(0)
    out = gen(torch.randn(64, 10) * 3)
    assert out.shape == (64, 36)
    if structure in ("fc_relu", "2fc_relu"):
        assert (out >= 0).all() and (out == 0).any()
    else:
        assert (out < 0).any()


def test_unknown_generator_raises() -> None:
    with pytest.raises(ValueError, match="unknown generator 'mlp'; choose one of fc_relu"):
        WeightGenerator(10, 4, "mlp")


def test_weight_branch_composes_iz_and_generator() -> None:
    features, queries, poi = feature_fixture()
    branch = WeightBranch(out_dim=12, in_channels=5, anchor_shape=True)
    assert branch.iz_dim == 10 and branch.out_dim == 12
    torch.testing.assert_close(branch(queries, features), branch.generator(torch.tensor(RETINA_IZ)))
    assert WeightBranch(12, 5, anchor_shape=False).iz_dim == 7
    feat_branch = WeightBranch(out_dim=12, in_channels=5, parts=[])
    assert feat_branch.iz_dim == 5
    torch.testing.assert_close(feat_branch(queries, features), feat_branch.generator(poi))
