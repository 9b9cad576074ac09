"""Training-query sampling (paper §3.3) and mask targets."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou, roi_align

from pointins.detectors.anchors import AnchorGenerator, PointGenerator
from pointins.detectors.assigners import anchor_condition_iou
from pointins.mask.sampling import (
    ANCHOR_BOX,
    GT_BOX,
    REGRESSED_BOX,
    draw_box_types,
    mask_targets,
    paired_box_iou,
    sample_queries,
)
from pointins.structures import InstanceQueries

STRIDES = (8, 16, 32)


def _setup(image: int = 128, batch: int = 2, num_gt: int = 4, seed: int = 0, fcos: bool = False):
    """Anchors of a ``image x image`` input, random GT boxes and jittered regressed boxes."""
    g = torch.Generator().manual_seed(seed)
    gen = PointGenerator(STRIDES) if fcos else AnchorGenerator(STRIDES)
    sizes = [(image // s, image // s) for s in STRIDES]
    per_level = gen(sizes, "cpu")
    anchors = torch.cat(per_level)  # (N, 4)
    level_ids = gen.level_ids(sizes)
    xy = torch.rand(batch, num_gt, 2, generator=g) * image * 0.6
    wh = 16 + torch.rand(batch, num_gt, 2, generator=g) * image * 0.4
    gt_boxes = torch.cat([xy, xy + wh], dim=-1)  # (B, G, 4)
    gt_valid = torch.ones(batch, num_gt, dtype=torch.bool)
    num = anchors.shape[0]
    jitter = torch.randn(batch, num, 4, generator=g) * 4
    pred = anchors[None].expand(batch, num, 4) + jitter  # (B, N, 4)
    return dict(
        gen=gen,
        sizes=sizes,
        per_level=per_level,
        anchors=anchors,
        level_ids=level_ids,
        gt_boxes=gt_boxes,
        gt_valid=gt_valid,
        pred=pred,
        num_anchors=gen.num_anchors,
    )


def _sample(s, anchor_gt, pred=None, with_info=False, **kw):
    queries, info = sample_queries(
        s["anchors"],
        s["level_ids"],
        s["sizes"],
        STRIDES,
        s["num_anchors"],
        anchor_gt,
        s["pred"] if pred is None else pred,
        s["gt_boxes"],
        s["gt_valid"],
        **kw,
    )
    return (queries, info) if with_info else queries


def _pred_near_gt(s, anchor_gt, shift: float = 1.5):
    """Regressed boxes = the anchor's GT shifted by ``shift`` px (IoU with the GT ~0.9)."""
    idx = anchor_gt.clamp(min=0)  # (B, N)
    gt = torch.gather(s["gt_boxes"], 1, idx[..., None].expand(*idx.shape, 4))  # (B, N, 4)
    return gt + shift


# ------------------------------------------------------------------------ thresholds
@pytest.mark.parametrize("t_a,t_b", [(0.4, 0.5), (0.5, 0.5), (0.5, 0.7), (0.6, 0.6)])
def test_queries_respect_thresholds(t_a: float, t_b: float) -> None:
    s = _setup(num_gt=6)
    anchor_gt = anchor_condition_iou(s["anchors"], s["gt_boxes"], s["gt_valid"], t_a)
    noise = torch.randn(2, len(s["anchors"]), 4, generator=torch.Generator().manual_seed(7))
    pred = _pred_near_gt(s, anchor_gt, shift=0.0) + noise * 6
    q = _sample(s, anchor_gt, pred=pred, box_iou_thresh=t_b, num_samples=None)
    assert len(q) > 0
    gt = s["gt_boxes"][q.batch_idx, q.gt_idx]  # (Q, 4)
    assert (paired_box_iou(q.anchors, gt) > t_a).all()
    assert (paired_box_iou(q.target_boxes, gt) > t_b).all()
    # and nothing is missed: with only regressed boxes, the positives are exactly the
    # anchors passing t_a whose regressed box passes t_b
    q_reg = _sample(
        s, anchor_gt, pred=pred, box_iou_thresh=t_b, num_samples=None, target_box_probs=(0, 0, 1)
    )
    expected = 0
    for b in range(2):
        n = (anchor_gt[b] >= 0).nonzero()[:, 0]
        gt_b = s["gt_boxes"][b, anchor_gt[b, n]]
        expected += int((paired_box_iou(pred[b, n], gt_b) > t_b).sum())
    assert len(q_reg) == expected


# ------------------------------------------------------------------ number of samples
@pytest.mark.parametrize("num_samples", [1, 5, 20, None])
def test_num_samples_per_image(num_samples: int | None) -> None:
    s = _setup(num_gt=6)
    anchor_gt = anchor_condition_iou(s["anchors"], s["gt_boxes"], s["gt_valid"])
    pred = _pred_near_gt(s, anchor_gt)
    q, info = _sample(s, anchor_gt, pred=pred, num_samples=num_samples, with_info=True)
    counts = torch.bincount(q.batch_idx, minlength=2)
    assert (info.num_positives > 5).all()
    cap = info.num_positives if num_samples is None else info.num_positives.clamp(max=num_samples)
    assert torch.equal(counts, cap)
    assert torch.equal(q.batch_idx, q.batch_idx.sort().values)  # grouped by image
    # no candidate is returned twice
    keys = q.batch_idx * len(s["anchors"]) + info.flat_idx
    assert keys.unique().numel() == len(q)


def test_subsampling_is_uniform() -> None:
    s = _setup(batch=1, num_gt=3, seed=3)
    anchor_gt = anchor_condition_iou(s["anchors"], s["gt_boxes"], s["gt_valid"])
    pred = _pred_near_gt(s, anchor_gt)
    num_pos = int((anchor_gt >= 0).sum())
    assert num_pos >= 15
    k, trials = 5, 1000
    hits = torch.zeros(len(s["anchors"]))
    g = torch.Generator().manual_seed(0)
    for _ in range(trials):
        _, info = _sample(
            s,
            anchor_gt,
            pred=pred,
            num_samples=k,
            generator=g,
            with_info=True,
            target_box_probs=(0, 1, 0),
        )
        hits[info.flat_idx] += 1
    freq = hits[anchor_gt[0] >= 0] / trials
    assert (freq - k / num_pos).abs().max() < 0.06
    assert hits[anchor_gt[0] < 0].sum() == 0


# ----------------------------------------------------------------------- mix ratios
def test_draw_box_types_ratios() -> None:
    g = torch.Generator().manual_seed(0)
    types = draw_box_types(200_000, (0.05, 0.05, 0.9), g)
    frac = torch.bincount(types, minlength=3).float() / types.numel()
    assert torch.allclose(frac, torch.tensor([0.05, 0.05, 0.9]), atol=0.005)
    for probs, only in [((1, 0, 0), 0), ((0, 1, 0), 1), ((0, 0, 1), 2), ((0, 0, 3), 2)]:
        assert (draw_box_types(10_000, probs, g) == only).all()
    with pytest.raises(ValueError, match="target_box_probs"):
        draw_box_types(3, (0.5, 0.5), g)


def test_target_box_mix_end_to_end() -> None:
    s = _setup(batch=8, num_gt=3, seed=1)
    g = torch.Generator().manual_seed(0)
    num = len(s["anchors"])
    anchor_gt = torch.randint(0, 3, (8, num), generator=g)  # every anchor is a candidate
    pred = _pred_near_gt(s, anchor_gt)  # differs from both the anchor and the GT
    q, info = _sample(
        s,
        anchor_gt,
        pred=pred,
        box_iou_thresh=-1.0,
        num_samples=None,
        generator=g,
        with_info=True,
    )
    assert len(q) == 8 * num  # t_b = -1 keeps every candidate
    gt = s["gt_boxes"][q.batch_idx, q.gt_idx]
    reg = pred[q.batch_idx, info.flat_idx]
    is_anchor = (q.target_boxes == q.anchors).all(1)
    is_gt = (q.target_boxes == gt).all(1)
    is_reg = (q.target_boxes == reg).all(1)
    assert (is_anchor.int() + is_gt.int() + is_reg.int() == 1).all()
    frac = torch.stack([is_anchor, is_gt, is_reg]).float().mean(1)
    assert torch.allclose(frac, torch.tensor([0.05, 0.05, 0.9]), atol=0.01)
    assert torch.equal(is_anchor, info.box_type == ANCHOR_BOX)
    assert torch.equal(is_gt, info.box_type == GT_BOX)
    assert torch.equal(is_reg, info.box_type == REGRESSED_BOX)
    assert torch.equal(info.candidate_box_type, info.box_type)


@pytest.mark.parametrize(
    "probs,kind", [((1, 0, 0), "anchor"), ((0, 1, 0), "gt"), ((0, 0, 1), "reg")]
)
def test_single_box_type(probs, kind) -> None:
    s = _setup(num_gt=6)
    anchor_gt = anchor_condition_iou(s["anchors"], s["gt_boxes"], s["gt_valid"], 0.5)
    pred = _pred_near_gt(s, anchor_gt)
    q, info = _sample(
        s, anchor_gt, pred=pred, num_samples=None, target_box_probs=probs, with_info=True
    )
    assert len(q) > 0
    expected = {
        "anchor": q.anchors,
        "gt": s["gt_boxes"][q.batch_idx, q.gt_idx],
        "reg": pred[q.batch_idx, info.flat_idx],
    }[kind]
    assert torch.equal(q.target_boxes, expected)


# --------------------------------------------------------------- index decode round trip
@pytest.mark.parametrize("fcos", [False, True])
def test_index_decodes_to_anchor_row(fcos: bool) -> None:
    s = _setup(fcos=fcos, num_gt=5)
    num = len(s["anchors"])
    anchor_gt = torch.randint(0, 5, (2, num), generator=torch.Generator().manual_seed(0))
    q, info = _sample(
        s,
        anchor_gt,
        box_iou_thresh=-1.0,
        num_samples=300,
        with_info=True,
        generator=torch.Generator().manual_seed(1),
    )
    assert len(q) == 600
    a_num = s["num_anchors"]
    assert torch.equal(q.anchors, s["anchors"][info.flat_idx])
    assert torch.equal(q.gt_idx, anchor_gt[q.batch_idx, info.flat_idx])
    for i in range(len(q)):
        level, (y, x), a = int(q.level[i]), q.yx[i].tolist(), int(info.anchor_idx[i])
        _, w = s["sizes"][level]
        row = s["per_level"][level][(y * w + x) * a_num + a]
        assert torch.equal(row, q.anchors[i])
        stride = STRIDES[level]
        assert float(q.stride[i]) == stride
        centre = (q.anchors[i, :2] + q.anchors[i, 2:]) / 2
        assert torch.allclose(centre, torch.tensor([(x + 0.5) * stride, (y + 0.5) * stride]))
    assert q.yx.dtype == torch.long and q.level.dtype == torch.long
    assert set(q.level.tolist()) == {0, 1, 2}


# ----------------------------------------------------------------------- misc properties
def test_regressed_boxes_are_detached() -> None:
    s = _setup()
    anchor_gt = anchor_condition_iou(s["anchors"], s["gt_boxes"], s["gt_valid"])
    pred = _pred_near_gt(s, anchor_gt).requires_grad_(True)
    q = _sample(s, anchor_gt, pred=pred, target_box_probs=(0, 0, 1))
    assert len(q) > 0
    assert not q.target_boxes.requires_grad and q.target_boxes.grad_fn is None
    assert pred.grad is None


def test_images_without_gt_give_no_queries() -> None:
    s = _setup(num_gt=4)
    s["gt_valid"][1] = False
    s["gt_boxes"][1] = 0
    anchor_gt = anchor_condition_iou(s["anchors"], s["gt_boxes"], s["gt_valid"])
    assert (anchor_gt[1] == -1).all()
    q = _sample(s, anchor_gt, pred=_pred_near_gt(s, anchor_gt), num_samples=None)
    assert len(q) > 0 and (q.batch_idx == 0).all()
    # a batch without any GT at all: (B, 0, 4)
    s["gt_boxes"], s["gt_valid"] = torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool)
    anchor_gt = anchor_condition_iou(s["anchors"], s["gt_boxes"], s["gt_valid"])
    assert anchor_gt.shape == (2, len(s["anchors"])) and (anchor_gt == -1).all()
    q = _sample(s, anchor_gt)
    assert isinstance(q, InstanceQueries) and len(q) == 0
    assert q.yx.shape == (0, 2) and q.target_boxes.shape == (0, 4) and q.gt_idx.shape == (0,)


def test_seeded_generator_is_deterministic() -> None:
    s = _setup(num_gt=6)
    anchor_gt = anchor_condition_iou(s["anchors"], s["gt_boxes"], s["gt_valid"], 0.4)
    pred = _pred_near_gt(s, anchor_gt)

    def run(seed: int):
        return _sample(
            s, anchor_gt, pred=pred, num_samples=8, generator=torch.Generator().manual_seed(seed)
        )

    a, b, c = run(5), run(5), run(6)
    for field in ("batch_idx", "level", "yx", "anchors", "target_boxes", "gt_idx"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not (torch.equal(a.anchors, c.anchors) and torch.equal(a.target_boxes, c.target_boxes))


# ------------------------------------------------------------------------- mask targets
def _queries(batch_idx, gt_idx, boxes) -> InstanceQueries:
    n = len(batch_idx)
    return InstanceQueries(
        batch_idx=torch.tensor(batch_idx),
        level=torch.zeros(n, dtype=torch.long),
        yx=torch.zeros(n, 2, dtype=torch.long),
        stride=torch.full((n,), 8.0),
        anchors=torch.tensor(boxes, dtype=torch.float32),
        target_boxes=torch.tensor(boxes, dtype=torch.float32),
        gt_idx=torch.tensor(gt_idx),
    )


def test_mask_targets_crop_hand_drawn() -> None:
    # image 0 (20 x 24): GT 0 is a square on rows/cols 4..11, i.e. box (4, 4, 12, 12)
    img0 = torch.zeros(2, 20, 24, dtype=torch.uint8)
    img0[0, 4:12, 4:12] = 1
    img0[1, 0:3, 0:3] = 1
    # image 1 (30 x 16): GT 1 a filled rectangle rows 5..24, cols 2..13
    img1 = torch.zeros(2, 30, 16, dtype=torch.uint8)
    img1[1, 5:25, 2:14] = 1
    queries = _queries(
        batch_idx=[0, 1, 0, 0],
        gt_idx=[0, 1, 0, 0],
        boxes=[
            [0, 4, 8, 12],  # left half empty, right half = left half of the square
            [2, 5, 14, 25],  # exactly the rectangle's box
            [4, 4, 12, 12],  # exactly the square's box
            [8, 0, 16, 8],  # top-right quarter of the square in the bottom-left of the box
        ],
    )
    t = mask_targets([img0, img1], queries, size=8)
    assert t.shape == (4, 8, 8) and t.dtype == torch.float32
    expected0 = torch.zeros(8, 8)
    expected0[:, 4:] = 1
    assert torch.equal(t[0], expected0)
    assert torch.equal(t[1], torch.ones(8, 8))
    assert torch.equal(t[2], torch.ones(8, 8))
    expected3 = torch.zeros(8, 8)
    expected3[4:, :4] = 1
    assert torch.equal(t[3], expected3)
    # at a finer resolution a box equal to the GT box is still (all but the corners) ones
    fine = mask_targets([img0, img1], queries[1:3], size=28)
    assert fine.mean() > 0.98
    assert set(fine.unique().tolist()) <= {0.0, 1.0}


def test_mask_targets_empty() -> None:
    queries = _queries([0], [0], [[0, 0, 4, 4]])[:0]
    t = mask_targets([torch.zeros(1, 8, 8, dtype=torch.uint8)], queries, size=6)
    assert t.shape == (0, 6, 6)


def test_mask_targets_do_not_depend_on_the_other_images() -> None:
    """Each image is cropped at its own size: adding a larger image to the batch (which
    pads nothing here, but did when all masks were stacked at the batch's largest size)
    leaves the targets of a box reaching past its image's border unchanged."""
    gen = torch.Generator().manual_seed(0)
    small = (torch.rand(3, 17, 13, generator=gen) > 0.5).to(torch.uint8)
    large = (torch.rand(2, 40, 50, generator=gen) > 0.5).to(torch.uint8)
    boxes = [[6.3, 9.1, 13.0, 17.0], [-2.0, 3.5, 8.0, 14.2], [1.0, 1.0, 12.7, 16.6]]
    alone = mask_targets([small], _queries([0, 0, 0], [2, 0, 1], boxes), size=8)
    both = mask_targets(
        [large, small],
        _queries([1, 0, 1, 1], [2, 1, 0, 1], [boxes[0], boxes[1], *boxes[1:]]),
        size=8,
    )
    assert torch.equal(both[[0, 2, 3]], alone)
    reference = roi_align(
        small.float()[[2, 0, 1], None],
        torch.cat([torch.arange(3.0)[:, None], torch.tensor(boxes)], dim=1),
        (8, 8),
        sampling_ratio=2,
        aligned=True,
    )[:, 0]
    assert torch.equal(alone, (reference >= 0.5).float())


def test_mask_targets_match_a_per_query_crop_in_any_query_order() -> None:
    """Queries in any image order, an image without queries, GTs referenced several times
    or not at all: every row is its own GT mask's crop at its image's size."""
    gen = torch.Generator().manual_seed(1)
    images = [
        (torch.rand(g, h, w, generator=gen) > 0.4).to(torch.uint8)
        for g, h, w in ((3, 21, 30), (2, 40, 12), (4, 17, 25))
    ]
    batch_idx, gt_idx = [2, 0, 2, 0, 2, 0], [3, 1, 0, 1, 3, 2]  # image 1 has no query
    xy = torch.rand(6, 2, generator=gen) * 10
    boxes = torch.cat([xy, xy + 4 + torch.rand(6, 2, generator=gen) * 10], dim=1).tolist()
    targets = mask_targets(images, _queries(batch_idx, gt_idx, boxes), size=6)
    for row, (b, g) in enumerate(zip(batch_idx, gt_idx, strict=True)):
        crop = roi_align(
            images[b][g].float()[None, None],
            torch.tensor([[0.0, *boxes[row]]]),
            (6, 6),
            sampling_ratio=2,
            aligned=True,
        )[0, 0]
        assert torch.equal(targets[row], (crop >= 0.5).float()), row


# ------------------------------------------------------------------------ paired IoU
def test_paired_box_iou_is_torchvision_diagonal() -> None:
    """Row ``i`` of the result is ``torchvision.ops.box_iou(a, b)[i, i]``, on random pairs
    plus hand-placed zero-area, disjoint, touching, nested and identical ones; a pair whose
    union is empty (torchvision: 0 / 0 = NaN) has IoU 0."""
    g = torch.Generator().manual_seed(5)
    corner = torch.rand(2, 200, 2, generator=g) * 100
    size = torch.rand(2, 200, 2, generator=g) * 40
    size[:, ::9, 0] = 0.0  # zero width
    size[0, ::13, 1] = 0.0  # zero height in the first set
    a, b = (torch.cat([c, c + s], dim=1) for c, s in zip(corner, size, strict=True))
    special = torch.tensor(
        [
            # a                     b
            [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]],  # disjoint
            [[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]],  # touching along a side
            [[0.0, 0.0, 10.0, 10.0], [2.0, 3.0, 6.0, 8.0]],  # nested: 20 / 100
            [[1.5, 2.5, 7.0, 9.0], [1.5, 2.5, 7.0, 9.0]],  # identical
            [[5.0, 5.0, 5.0, 9.0], [0.0, 0.0, 10.0, 10.0]],  # zero-area line inside a box
            [[4.0, 4.0, 4.0, 4.0], [0.0, 0.0, 10.0, 10.0]],  # a point inside a box
            [[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]],  # half overlap: 50 / 150
        ]
    )
    a, b = torch.cat([a, special[:, 0]]), torch.cat([b, special[:, 1]])
    for dtype in (torch.float32, torch.float64):
        ours = paired_box_iou(a.to(dtype), b.to(dtype))
        ref = box_iou(a.to(dtype), b.to(dtype)).diagonal()
        assert ours.shape == (a.shape[0],) and ours.dtype == dtype
        torch.testing.assert_close(ours, ref.nan_to_num(0.0), rtol=1e-6, atol=1e-7)
    tail = paired_box_iou(special[:, 0], special[:, 1]).tolist()
    assert tail == pytest.approx([0.0, 0.0, 0.2, 1.0, 0.0, 0.0, 1 / 3])
    # the hand-placed zero-area pairs are where torchvision divides 0 by a non-zero union
    assert not box_iou(special[:, 0], special[:, 1]).diagonal().isnan().any()
    degenerate = torch.tensor([[3.0, 3.0, 3.0, 3.0]])  # two empty boxes: union 0
    assert box_iou(degenerate, degenerate).isnan().all()
    assert paired_box_iou(degenerate, degenerate).tolist() == [0.0]
