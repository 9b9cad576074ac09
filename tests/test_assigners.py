"""Assigners: IoU (RetinaNet), FCOS and ATSS labelling, the mask anchor conditions, padding
and gathering helpers."""

from __future__ import annotations

import math

import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from pointins.detectors.anchors import AnchorGenerator, PointGenerator
from pointins.detectors.assigners import (
    ATSSAssigner,
    FCOSAssigner,
    IoUAssigner,
    anchor_condition_from_matches,
    anchor_condition_iou,
    gather_assigned,
    pad_targets,
)

STRIDES = (8, 16, 32, 64, 128)

# --- IoU assigner ---------------------------------------------------------------------------

GT0 = [0.0, 0.0, 10.0, 10.0]
GT1 = [100.0, 100.0, 110.0, 110.0]
HAND_ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # IoU 1 with GT0            -> 0
        [0.0, 0.0, 10.0, 4.5],  # IoU 0.45 with GT0          -> ignored
        [50.0, 50.0, 60.0, 60.0],  # overlaps nothing        -> background
        [100.0, 100.0, 110.0, 103.0],  # IoU 0.3, GT1's best -> 1 (low-quality)
        [100.0, 100.0, 103.0, 110.0],  # IoU 0.3, a tie      -> 1 (low-quality)
        [100.0, 100.0, 110.0, 101.0],  # IoU 0.1 with GT1    -> background
    ]
)


def test_iou_assigner_hand_made() -> None:
    gt = torch.tensor([[GT0, GT1]])  # (1, 2, 4)
    valid = torch.ones(1, 2, dtype=torch.bool)
    matched = IoUAssigner(0.5, 0.4, allow_low_quality_matches=True)(HAND_ANCHORS, gt, valid)
    assert matched.tolist() == [[0, -2, -1, 1, 1, -1]]
    strict = IoUAssigner(0.5, 0.4, allow_low_quality_matches=False)(HAND_ANCHORS, gt, valid)
    assert strict.tolist() == [[0, -2, -1, -1, -1, -1]]


def test_iou_assigner_padding_and_empty_images() -> None:
    # image 0: GT0 valid, padded slot holds GT1 (must never match);
    # image 1: no valid GT at all
    gt = torch.tensor([[GT0, GT1], [GT1, GT0]])  # (2, 2, 4)
    valid = torch.tensor([[True, False], [False, False]])
    matched = IoUAssigner()(HAND_ANCHORS, gt, valid)
    assert matched.tolist() == [[0, -2, -1, -1, -1, -1], [-1] * 6]
    # a batch without any GT
    none = IoUAssigner()(HAND_ANCHORS, torch.zeros(3, 0, 4), torch.zeros(3, 0, dtype=torch.bool))
    assert none.shape == (3, 6) and torch.all(none == -1)


def test_iou_assigner_matches_torchvision_matcher() -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # a 128 x 128 image
    anchors = torch.cat(AnchorGenerator(STRIDES)(sizes, "cpu"))  # (N, 4)
    num_gt = [7, 0, 3, 12]
    targets = []
    for g in num_gt:
        xy = torch.rand(g, 2, generator=gen) * 100
        wh = torch.rand(g, 2, generator=gen) * 90 + 4
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.zeros(g)})
    gt_boxes, _, gt_valid = pad_targets(targets)
    matched = IoUAssigner(0.5, 0.4, True)(anchors, gt_boxes, gt_valid)
    reference = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    for i, target in enumerate(targets):
        if len(target["boxes"]) == 0:
            assert torch.all(matched[i] == -1)
            continue
        expected = reference(box_iou(target["boxes"], anchors))
        assert torch.equal(matched[i], expected)
    assert (matched >= 0).any() and (matched == -2).any()
    # low-quality matches happened: some positives have IoU below 0.5
    best_iou = torch.stack(
        [
            box_iou(t["boxes"], anchors).max(0).values
            if len(t["boxes"])
            else torch.zeros(len(anchors))
            for t in targets
        ]
    )  # (B, N)
    assert ((matched >= 0) & (best_iou < 0.5)).any()


# --- FCOS assigner --------------------------------------------------------------------------

SIZES_256 = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]


def _fcos_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = PointGenerator(STRIDES)
    return torch.cat(gen(SIZES_256, "cpu")), gen.level_ids(SIZES_256)


def _location(level: int, y: int, x: int) -> int:
    offset = sum(h * w for h, w in SIZES_256[:level])
    return offset + y * SIZES_256[level][1] + x


def _assign(boxes: list[list[float]]) -> torch.Tensor:
    anchors, level_ids = _fcos_inputs()
    gt = torch.tensor([boxes])  # (1, G, 4)
    valid = torch.ones(1, len(boxes), dtype=torch.bool)
    return FCOSAssigner()(anchors, gt, valid, level_ids)[0]


def test_fcos_centre_sampling() -> None:
    # GT centre (40, 40); P3 radius 1.5 * 8 = 12: only locations 36 and 44 qualify per axis
    matched = _assign([[16.0, 16.0, 64.0, 64.0]])
    positives = torch.nonzero(matched >= 0).flatten().tolist()
    expected = [_location(0, y, x) for y in (4, 5) for x in (4, 5)]  # centres 36, 44
    assert sorted(positives) == sorted(expected)
    # (20, 20) is inside the box (l = t = 4) but 20 px from the centre: not a positive
    assert matched[_location(0, 2, 2)] == -1
    # no -2 in FCOS
    assert matched.min() >= -1


def test_fcos_size_ranges_route_big_box_up() -> None:
    matched = _assign([[0.0, 0.0, 256.0, 256.0]])
    _, level_ids = _fcos_inputs()
    positive_levels = level_ids[matched >= 0]
    # P5 (stride 32, range [128, 256]): locations 112 and 144 per axis, max distance 144
    assert positive_levels.tolist() == [2, 2, 2, 2]
    expected = sorted(_location(2, y, x) for y in (3, 4) for x in (3, 4))
    assert torch.nonzero(matched >= 0).flatten().tolist() == expected


def test_fcos_ambiguous_location_takes_smallest_box() -> None:
    big, small = [0.0, 0.0, 60.0, 60.0], [20.0, 20.0, 52.0, 52.0]
    matched = _assign([big, small])
    loc = _location(0, 4, 4)  # (36, 36): positive for both
    assert matched[loc] == 1
    assert _assign([small, big])[loc] == 0
    # a location only the big box claims stays with it: (28, 20) is outside the small box
    assert matched[_location(0, 2, 3)] == 0


def test_fcos_padding_and_empty() -> None:
    anchors, level_ids = _fcos_inputs()
    gt = torch.tensor([[[16.0, 16.0, 64.0, 64.0]], [[16.0, 16.0, 64.0, 64.0]]])  # (2, 1, 4)
    valid = torch.tensor([[True], [False]])
    matched = FCOSAssigner()(anchors, gt, valid, level_ids)
    assert (matched[0] >= 0).sum() == 4 and torch.all(matched[1] == -1)
    empty = FCOSAssigner()(anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0).bool(), level_ids)
    assert empty.shape == (2, anchors.shape[0]) and torch.all(empty == -1)


def _fcos_reference(anchors, level_ids, boxes, ranges, radius=1.5) -> list[int]:
    """Slow per-location, per-GT loop straight from the FCOS paper's rules."""
    out = []
    for n in range(anchors.shape[0]):
        x0, y0, x1, y1 = anchors[n].tolist()
        px, py, stride = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
        lo, hi = ranges[int(level_ids[n])]
        best, best_area = -1, math.inf
        for g, (bx0, by0, bx1, by1) in enumerate(boxes.tolist()):
            ltrb = (px - bx0, py - by0, bx1 - px, by1 - py)
            cx0 = max((bx0 + bx1) / 2 - radius * stride, bx0)
            cx1 = min((bx0 + bx1) / 2 + radius * stride, bx1)
            cy0 = max((by0 + by1) / 2 - radius * stride, by0)
            cy1 = min((by0 + by1) / 2 + radius * stride, by1)
            in_centre = cx0 < px < cx1 and cy0 < py < cy1
            ok = min(ltrb) > 0 and in_centre and lo <= max(ltrb) <= hi
            area = (bx1 - bx0) * (by1 - by0)
            if ok and area < best_area:
                best, best_area = g, area
        out.append(best)
    return out


def test_fcos_matches_slow_reference() -> None:
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # a 64 x 64 image
    gen = PointGenerator(STRIDES)
    anchors, level_ids = torch.cat(gen(sizes, "cpu")), gen.level_ids(sizes)
    ranges = [(0, 16), (16, 32), (32, 48), (48, 64), (64, math.inf)]  # small, to use every level
    rng = torch.Generator().manual_seed(3)
    targets = []
    for g in (6, 1, 9):
        xy = torch.rand(g, 2, generator=rng) * 50
        wh = torch.rand(g, 2, generator=rng) * 60 + 2
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.zeros(g)})
    gt_boxes, _, gt_valid = pad_targets(targets)
    matched = FCOSAssigner(1.5, ranges)(anchors, gt_boxes, gt_valid, level_ids)
    for i, target in enumerate(targets):
        expected = _fcos_reference(anchors, level_ids, target["boxes"], ranges)
        assert matched[i].tolist() == expected
    assert len(set(level_ids[(matched >= 0).any(0)].tolist())) >= 3  # several levels used


# --- helpers --------------------------------------------------------------------------------


def test_pad_targets_and_gather() -> None:
    targets = [
        {"boxes": torch.tensor([GT0, GT1]), "labels": torch.tensor([3, 5])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([GT1]), "labels": torch.tensor([7])},
    ]
    gt_boxes, gt_labels, gt_valid = pad_targets(targets)
    assert gt_boxes.shape == (3, 2, 4) and gt_labels.dtype == torch.long
    assert gt_valid.tolist() == [[True, True], [False, False], [True, False]]
    assert gt_labels.tolist() == [[3, 5], [-1, -1], [7, -1]]
    matched = torch.tensor([[1, -1, 0], [-1, -1, -2], [0, 0, -1]])
    assignment = gather_assigned(matched, gt_boxes, gt_labels)
    assert assignment.gt_boxes.shape == (3, 3, 4)
    assert assignment.gt_labels[0].tolist()[::2] == [5, 3]
    assert torch.equal(assignment.gt_boxes[0, 0], torch.tensor(GT1))
    assert assignment.gt_labels[2, :2].tolist() == [7, 7]
    assert assignment.matched_idxs is matched


def test_gather_without_any_gt() -> None:
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    gt_boxes, gt_labels, gt_valid = pad_targets(targets)
    assert gt_boxes.shape == (2, 0, 4) and gt_valid.shape == (2, 0)
    matched = torch.full((2, 5), -1)
    assignment = gather_assigned(matched, gt_boxes, gt_labels)
    assert assignment.gt_boxes.shape == (2, 5, 4) and assignment.gt_labels.shape == (2, 5)


# --- anchor conditions of mask sampling -----------------------------------------------------


def _random_scene(num_gt: int = 5, image: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sizes = [(image // s, image // s) for s in STRIDES[:3]]
    anchors = torch.cat(AnchorGenerator(STRIDES[:3])(sizes, "cpu"))  # (N, 4)
    xy = torch.rand(2, num_gt, 2, generator=g) * image * 0.6
    wh = 16 + torch.rand(2, num_gt, 2, generator=g) * image * 0.4
    gt_boxes = torch.cat([xy, xy + wh], dim=-1)  # (B, G, 4)
    return anchors, gt_boxes, torch.ones(2, num_gt, dtype=torch.bool)


def test_anchor_condition_iou_matches_brute_force() -> None:
    anchors, gt_boxes, gt_valid = _random_scene()
    gt_valid[1, 3:] = False  # padded GTs must never be chosen
    for thresh in (0.4, 0.5, 0.6):
        anchor_gt = anchor_condition_iou(anchors, gt_boxes, gt_valid, thresh)
        for b in range(2):
            valid = gt_valid[b].nonzero()[:, 0]
            iou = box_iou(anchors, gt_boxes[b, valid])  # (N, G_b)
            best, arg = iou.max(dim=1)
            expected = torch.where(best > thresh, valid[arg], torch.full_like(arg, -1))
            assert torch.equal(anchor_gt[b], expected)
        assert (anchor_gt >= 0).any()
    assert not (anchor_condition_iou(anchors, gt_boxes, gt_valid)[1] >= 3).any()


def test_anchor_condition_from_matches() -> None:
    matched = torch.tensor([[0, -1, -2, 3], [2, -2, -1, 1]])
    assert torch.equal(
        anchor_condition_from_matches(matched), torch.tensor([[0, -1, -1, 3], [2, -1, -1, 1]])
    )


def test_each_assigner_states_its_mask_anchor_condition() -> None:
    """RetinaNet's condition is IoU > t_a whatever the training match; FCOS's and ATSS's
    are their own positives, whatever t_a."""
    anchors, gt_boxes, gt_valid = _random_scene()
    matched = torch.randint(
        -2, 5, (2, anchors.shape[0]), generator=torch.Generator().manual_seed(1)
    )
    by_iou = IoUAssigner().mask_anchor_condition(anchors, matched, gt_boxes, gt_valid, 0.6)
    assert torch.equal(by_iou, anchor_condition_iou(anchors, gt_boxes, gt_valid, 0.6))
    for assigner in (FCOSAssigner(), ATSSAssigner()):
        for t_a in (0.1, 0.9):
            cond = assigner.mask_anchor_condition(anchors, matched, gt_boxes, gt_valid, t_a)
            assert torch.equal(cond, anchor_condition_from_matches(matched))


# --- ATSS assigner ---------------------------------------------------------------------------

# two levels by hand: squares of side 16 (level 0) and 32 (level 1)
ATSS_ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 16.0, 16.0],  # l0, centre (8, 8):   IoU 0.64 with GT [0, 0, 20, 20]
        [8.0, 8.0, 24.0, 24.0],  # l0, centre (16, 16): IoU 0.28125
        [24.0, 24.0, 40.0, 40.0],  # l0, centre (32, 32): IoU 0, farthest on l0
        [-6.0, -6.0, 26.0, 26.0],  # l1, centre (10, 10): IoU 0.390625
        [16.0, -6.0, 48.0, 26.0],  # l1, centre (32, 10): IoU 80 / 1344
        [16.0, 16.0, 48.0, 48.0],  # l1, centre (32, 32): IoU 16 / 1408, farthest on l1
    ]
)
ATSS_LEVELS = torch.tensor([0, 0, 0, 1, 1, 1])


def test_atss_hand_computed_threshold() -> None:
    """topk = 2 per level: candidates are anchors 0, 1 (level 0) and 3, 4 (level 1), with
    IoUs 0.64, 0.28125, 0.390625 and 0.0595; mean 0.3428 + std 0.2413 = 0.5841, so only
    anchor 0 is positive. With topk = 3 the far anchors (IoU 0 and 0.0114) join the
    candidates, the threshold drops to 0.2305 + 0.2555 = 0.4859: still anchor 0 only."""
    gt = torch.tensor([[[0.0, 0.0, 20.0, 20.0]]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    matched = ATSSAssigner(topk=2)(ATSS_ANCHORS, gt, valid, ATSS_LEVELS)
    assert matched.tolist() == [[0, -1, -1, -1, -1, -1]]
    assert ATSSAssigner(topk=3)(ATSS_ANCHORS, gt, valid, ATSS_LEVELS).tolist() == [
        [0, -1, -1, -1, -1, -1]
    ]
    # one candidate per level whose IoUs differ widely: mean + std exceeds them both
    small = torch.tensor([[[0.0, 0.0, 15.0, 15.0]]])
    matched = ATSSAssigner(topk=1)(ATSS_ANCHORS, small, valid, ATSS_LEVELS)
    # candidates: anchor 0 (IoU 225/256 = 0.879) and anchor 3 (IoU 225/1024 = 0.220);
    # threshold 0.549 + 0.466 = 1.016 > both: nothing is positive
    assert matched.tolist() == [[-1] * 6]


def test_atss_centre_inside_and_best_iou_tie_break() -> None:
    """Two GTs claim anchor 3 (the centre (10, 10) lies in both); it takes the GT of higher
    IoU. A padded GT never matches; an image without GT is background."""
    gt = torch.tensor(
        [
            [[0.0, 0.0, 20.0, 20.0], [-6.0, -6.0, 26.0, 26.0], [0.0, 0.0, 16.0, 16.0]],
            [[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
        ]
    )
    valid = torch.tensor([[True, True, False], [False, False, False]])
    matched = ATSSAssigner(topk=9)(ATSS_ANCHORS, gt, valid, ATSS_LEVELS)
    assert matched[0, 3] == 1  # IoU 1.0 with GT 1 against 0.39 with GT 0
    assert matched[0, 0] in (0, 1) and (matched[0] != 2).all()  # the padded GT 2 never wins
    assert matched[1].tolist() == [-1] * 6
    empty = ATSSAssigner()(
        ATSS_ANCHORS, torch.zeros(2, 0, 4), torch.zeros(2, 0).bool(), ATSS_LEVELS
    )
    assert empty.shape == (2, 6) and (empty == -1).all()


def _atss_reference(anchors, level_ids, gt_boxes, gt_valid, topk):
    """ATSS one image and one GT at a time, as written in the paper's Algorithm 1."""
    batch = gt_boxes.shape[0]
    matched = torch.full((batch, anchors.shape[0]), -1)
    best = torch.full((batch, anchors.shape[0]), -1.0)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    for b in range(batch):
        for g in range(gt_boxes.shape[1]):
            if not gt_valid[b, g]:
                continue
            box = gt_boxes[b, g]
            iou = box_iou(box[None], anchors)[0]  # (N,)
            dist = (centres - (box[:2] + box[2:]) / 2).norm(dim=1)  # (N,)
            candidates = []
            for level in level_ids.unique().tolist():
                idx = (level_ids == level).nonzero()[:, 0]
                candidates += idx[dist[idx].argsort()[:topk]].tolist()
            thresh = iou[candidates].mean() + iou[candidates].std()
            for c in candidates:
                x, y = centres[c].tolist()
                inside = min(x - box[0], y - box[1], box[2] - x, box[3] - y) > 0.01
                if iou[c] >= thresh and inside and iou[c] > best[b, c]:
                    best[b, c], matched[b, c] = iou[c], g
    return matched


def test_atss_matches_per_gt_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # a 128 x 128 image
    anchor_gen = AnchorGenerator(
        STRIDES, octave_base_scale=8, scales_per_octave=1, aspect_ratios=[1.0]
    )
    anchors = torch.cat(anchor_gen(sizes, "cpu"))  # (N, 4)
    level_ids = anchor_gen.level_ids(sizes)
    xy = torch.rand(3, 6, 2, generator=gen) * 90
    wh = 6 + torch.rand(3, 6, 2, generator=gen) * 60
    gt_boxes = torch.cat([xy, xy + wh], dim=-1)  # (B, G, 4)
    gt_valid = torch.tensor([[True] * 6, [True] * 3 + [False] * 3, [True] + [False] * 5])
    for topk in (1, 3, 9):
        matched = ATSSAssigner(topk)(anchors, gt_boxes, gt_valid, level_ids)
        assert torch.equal(matched, _atss_reference(anchors, level_ids, gt_boxes, gt_valid, topk))
    assert (matched >= 0).sum() >= 6


def test_atss_candidate_above_threshold_needs_its_centre_inside() -> None:
    """Nine candidates on one level: IoUs 0.281 (centre inside), 0.316 (centre left of the
    GT) and seven zeros; threshold 0.066 + 0.132 = 0.198. Both pass it; only the anchor
    whose centre lies inside the GT is positive."""
    far = [[100.0 + 16 * i, 100.0, 116.0 + 16 * i, 116.0] for i in range(7)]
    anchors = torch.tensor([[8.0, 8.0, 24.0, 24.0], [-10.4, 0.0, 9.6, 20.0], *far])
    gt = torch.tensor([[[0.0, 0.0, 20.0, 20.0]]])
    matched = ATSSAssigner(topk=9)(anchors, gt, torch.ones(1, 1).bool(), torch.zeros(9).long())
    assert matched.tolist() == [[0] + [-1] * 8]
