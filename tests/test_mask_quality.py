"""benchmarks.mask_quality: which detections count, that the oracle is the training target
pasted back (a prediction equal to it scores exactly the oracle's IoU), the boundary
F-score and the oracle ranking's scores."""

from __future__ import annotations

import torch

from benchmarks.mask_quality import (
    boundary_f_score,
    matched_mask_quality,
    oracle_ranking_scores,
    overlay_tile,
    summary_table,
)
from pointins.structures import Detections

S = 32  # 2K
STRIDES = (8, 16, 32, 64, 128)


def _detections(boxes, scores, masks, level):
    n = len(boxes)
    return Detections(
        boxes=torch.tensor(boxes, dtype=torch.float32),
        scores=torch.tensor(scores),
        labels=torch.zeros(n, dtype=torch.long),
        level=torch.tensor(level),
        yx=torch.zeros(n, 2, dtype=torch.long),
        anchor_idx=torch.zeros(n, dtype=torch.long),
        anchors=torch.tensor(boxes, dtype=torch.float32),
        masks=masks,
    )


def _disc(size=96, centre=(40.0, 50.0), radius=22.0):
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    mask = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2
    box = [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]
    return mask, box


def test_only_confident_detections_overlapping_a_gt_box_count():
    mask, box = _disc()
    gt_boxes, gt_masks = torch.tensor([box]), mask[None].to(torch.uint8)
    det = _detections(
        [box, box, [0.0, 0.0, 8.0, 8.0]],
        [0.9, 0.1, 0.8],  # the second scores too low, the third misses every GT
        torch.ones(3, S, S),
        [2, 2, 0],
    )
    rows = matched_mask_quality(det, gt_boxes, gt_masks, (96, 96), STRIDES, score_thresh=0.3)
    assert rows.shape == (1, 6)
    level, predicted, oracle, oracle_fine, area, boundary = rows[0].tolist()
    assert level == 2 and area == mask.sum().item()
    # a full box for a disc: IoU = disc / square = pi / 4, and the oracle is far better
    assert abs(predicted - torch.pi / 4) < 0.02
    assert oracle > 0.95 and oracle_fine >= oracle  # a finer crop follows the disc closer
    assert boundary < 0.8  # the square's corners lie far from the circle


def test_a_prediction_equal_to_the_training_target_scores_the_oracle():
    mask, box = _disc()
    gt_boxes, gt_masks = torch.tensor([box]), mask[None].to(torch.uint8)
    # the training target for this box (mask_targets' crop), predicted as probabilities
    y, x = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(S) + 0.5, indexing="ij")
    target = (((x / S - 0.5) ** 2 + (y / S - 0.5) ** 2) <= 0.25).float()
    det = _detections([box], [0.9], target[None], [1])
    rows = matched_mask_quality(det, gt_boxes, gt_masks, (96, 96), STRIDES)
    _, predicted, oracle, _, _, _ = rows[0].tolist()
    assert abs(predicted - oracle) < 0.01 and oracle > 0.95
    empty = _detections([box], [0.9], torch.zeros(1, S, S), [1])
    assert matched_mask_quality(empty, gt_boxes, gt_masks, (96, 96), STRIDES)[0, 1] == 0


def test_summary_rows_per_level_size_and_all():
    # level, IoU, oracle, finer oracle, area, boundary F
    rows = torch.tensor(
        [
            [0, 0.8, 0.9, 0.95, 100, 0.7],
            [0, 0.6, 0.9, 0.97, 300, 0.5],
            [2, 0.5, 0.8, 0.9, 50000, 0.3],
        ]
    )
    table = summary_table(rows, num_levels=5).splitlines()
    names = [line.split("|")[1].strip() for line in table[2:]]
    assert names == ["P3", "P5", "small", "large", "all"]
    p3 = [c.strip() for c in table[2].split("|")]
    # median: lower middle
    assert p3[2:10] == ["2", "100", "0.700", "0.900", "0.960", "0.600", "0.50", "1.00"]


def test_boundary_f_score():
    square = torch.zeros(1, 40, 40, dtype=torch.bool)
    square[0, 10:30, 10:30] = True
    assert boundary_f_score(square, square).item() == 1.0
    near = torch.roll(square, 2, dims=2)  # contours 2 px apart: within the tolerance
    assert boundary_f_score(near, square).item() == 1.0
    far = torch.roll(square, 6, dims=2)  # only the top and bottom edges overlap partly
    assert boundary_f_score(far, square).item() < 0.7
    empty = torch.zeros_like(square)
    assert boundary_f_score(empty, empty).item() == 1.0
    assert boundary_f_score(empty, square).item() == 0.0


def test_oracle_ranking_scores_are_mask_iou_with_the_best_same_class_gt():
    gt = torch.zeros(2, 10, 10, dtype=torch.bool)
    gt[0, :5], gt[1, 5:] = True, True  # two halves, classes 0 and 1
    pred = torch.zeros(3, 10, 10, dtype=torch.bool)
    pred[0, :5] = True  # exactly GT 0, class 0
    pred[1, :5, :5] = True  # half of GT 0, class 0
    pred[2, 5:] = True  # exactly GT 1, but labelled class 0: no same-class GT overlaps
    scores = oracle_ranking_scores(pred, torch.tensor([0, 0, 0]), gt, torch.tensor([0, 1]))
    assert scores.tolist() == [1.0, 0.5, 0.0]


def test_overlay_colours_agreement_and_both_errors():
    image = torch.rand(3, 20, 20)
    gt = torch.zeros(20, 20, dtype=torch.bool)
    gt[:, :10] = True
    predicted = torch.zeros_like(gt)
    predicted[:, 5:15] = True
    tile = overlay_tile(image, predicted, gt, torch.tensor([0.0, 0.0, 20.0, 20.0]))
    assert tile.shape == (3, 128, 256) and tile.dtype == torch.uint8
    overlay = tile[:, :, 128:]  # right half: columns 0-4 GT only, 5-9 both, 10-14 predicted
    assert overlay[:, 0, 0].tolist() == [0, 0, 255]
    assert overlay[:, 0, 50].tolist() == [0, 255, 0]
    assert overlay[:, 0, 80].tolist() == [255, 0, 0]
    assert overlay[:, 0, 127].tolist() == [0, 0, 0]
