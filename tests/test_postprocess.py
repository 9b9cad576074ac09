"""Post-processing: equivalence with a per-image reference, the official FCOS/ATSS score
convention computed by hand, and the properties users rely on."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from pointins.detectors.anchors import AnchorGenerator, PointGenerator
from pointins.detectors.box_coders import DeltaBoxCoder, LTRBBoxCoder
from pointins.detectors.postprocess import postprocess_detections

STRIDES = (8, 16, 32, 64, 128)
SIZES = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]  # a 64 x 96 padded input
IMAGE_SIZES = [(64, 96), (50, 70)]
NUM_CLASSES = 3


def _retinanet_inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    anchors = AnchorGenerator(STRIDES)(SIZES, "cpu")
    cls = [torch.randn(2, h * w * 9, NUM_CLASSES, generator=gen) - 1.0 for h, w in SIZES]
    reg = [torch.randn(2, h * w * 9, 4, generator=gen) * 0.2 for h, w in SIZES]
    return dict(
        cls_logits=cls,
        box_regression=reg,
        centerness=None,
        anchors=anchors,
        feature_sizes=SIZES,
        num_anchors=9,
        box_coder=DeltaBoxCoder(),
        image_sizes=IMAGE_SIZES,
    )


def _fcos_inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    anchors = PointGenerator(STRIDES)(SIZES, "cpu")
    cls = [torch.randn(2, h * w, NUM_CLASSES, generator=gen) - 1.0 for h, w in SIZES]
    reg = [torch.rand(2, h * w, 4, generator=gen) * 3 + 0.3 for h, w in SIZES]
    ctr = [torch.randn(2, h * w, generator=gen) for h, w in SIZES]
    return dict(
        cls_logits=cls,
        box_regression=reg,
        centerness=ctr,
        anchors=anchors,
        feature_sizes=SIZES,
        num_anchors=1,
        box_coder=LTRBBoxCoder(),
        image_sizes=IMAGE_SIZES,
    )


def _atss_inputs(seed: int = 2):
    """Several anchors per location, each with its own centre-ness: scores pair them up."""
    gen = torch.Generator().manual_seed(seed)
    inputs = _retinanet_inputs(seed)
    inputs["centerness"] = [torch.randn(2, h * w * 9, generator=gen) * 3 for h, w in SIZES]
    return inputs


def _reference(inputs, score_thresh, topk, nms_thresh, per_img):
    """torchvision's RetinaNet post-processing, and with centre-ness the official FCOS/ATSS
    one (threshold on sigmoid(cls), top-k by the product with sigmoid(ctr), score its
    root), one image and one level at a time."""
    results = []
    for i, image_size in enumerate(inputs["image_sizes"]):
        boxes_all, scores_all, labels_all = [], [], []
        for level in range(len(inputs["feature_sizes"])):
            cls = torch.sigmoid(inputs["cls_logits"][level][i])  # (HWA, C)
            scores = cls
            if inputs["centerness"] is not None:
                ctr = torch.sigmoid(inputs["centerness"][level][i])  # (HWA,)
                scores = cls * ctr[:, None]
            keep = cls.flatten() > score_thresh
            scores, idxs = scores.flatten()[keep], torch.nonzero(keep).flatten()
            scores, order = scores.topk(min(topk, idxs.numel()))
            idxs = idxs[order]
            if inputs["centerness"] is not None:
                scores = scores.sqrt()
            anchor_idx, labels = idxs // NUM_CLASSES, idxs % NUM_CLASSES
            boxes = inputs["box_coder"].decode(
                inputs["anchors"][level][anchor_idx], inputs["box_regression"][level][i][anchor_idx]
            )
            boxes = clip_boxes_to_image(boxes, image_size)
            non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # our addition
            boxes_all.append(boxes[non_empty])
            scores_all.append(scores[non_empty])
            labels_all.append(labels[non_empty])
        boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:per_img]
        results.append((boxes[keep], scores[keep], labels[keep]))
    return results


@pytest.mark.parametrize("make_inputs", [_retinanet_inputs, _fcos_inputs, _atss_inputs])
@pytest.mark.parametrize(("topk", "nms_thresh", "per_img"), [(1000, 0.5, 100), (50, 0.6, 10)])
def test_matches_per_image_reference(make_inputs, topk, nms_thresh, per_img) -> None:
    inputs = make_inputs()
    dets = postprocess_detections(
        **inputs, topk_candidates=topk, nms_thresh=nms_thresh, detections_per_img=per_img
    )
    reference = _reference(inputs, 0.05, topk, nms_thresh, per_img)
    assert len(dets) == 2
    for det, (boxes, scores, labels) in zip(dets, reference, strict=True):
        torch.testing.assert_close(det.scores, scores)
        torch.testing.assert_close(det.boxes, boxes)
        assert torch.equal(det.labels, labels)
    assert len(dets[0]) == per_img  # the cap is exercised


@pytest.mark.parametrize("make_inputs", [_retinanet_inputs, _fcos_inputs, _atss_inputs])
def test_properties_and_provenance(make_inputs) -> None:
    inputs = make_inputs()
    nms_thresh = 0.5
    dets = postprocess_detections(**inputs, nms_thresh=nms_thresh)
    num_anchors = inputs["num_anchors"]
    for i, det in enumerate(dets):
        h, w = IMAGE_SIZES[i]
        assert 0 < len(det) <= 100
        assert torch.all(det.scores[:-1] >= det.scores[1:])
        assert torch.all(det.boxes >= 0)
        assert torch.all(det.boxes[:, 2:] > det.boxes[:, :2])  # clipping left no empty box
        assert torch.all(det.boxes[:, [0, 2]] <= w) and torch.all(det.boxes[:, [1, 3]] <= h)
        assert det.level.dtype == det.yx.dtype == det.anchor_idx.dtype == torch.long
        # each detection indexes back to the logit (and anchor) that produced its score
        for n in range(len(det)):
            level = int(det.level[n])
            y, x = det.yx[n].tolist()
            a = int(det.anchor_idx[n])
            width = SIZES[level][1]
            flat = (y * width + x) * num_anchors + a
            score = torch.sigmoid(inputs["cls_logits"][level][i, flat, det.labels[n]])
            assert score > 0.05  # the threshold is on the classification score
            if inputs["centerness"] is not None:
                ctr = torch.sigmoid(inputs["centerness"][level][i, flat])  # its own anchor's
                score = torch.sqrt(score * ctr)
            torch.testing.assert_close(det.scores[n], score)
            assert torch.equal(det.anchors[n], inputs["anchors"][level][flat])
        # NMS honoured: same-class boxes overlap at most nms_thresh
        iou = box_iou(det.boxes, det.boxes)
        same = det.labels[:, None] == det.labels[None, :]
        off_diag = ~torch.eye(len(det), dtype=torch.bool)
        assert torch.all(iou[same & off_diag] <= nms_thresh + 1e-6)


def test_no_detection_above_threshold() -> None:
    inputs = _retinanet_inputs()
    inputs["cls_logits"] = [torch.full_like(c, -10.0) for c in inputs["cls_logits"]]
    dets = postprocess_detections(**inputs)
    assert [len(d) for d in dets] == [0, 0]
    assert dets[0].boxes.shape == (0, 4) and dets[0].yx.shape == (0, 2)


def test_each_anchor_scored_with_its_own_centerness() -> None:
    """With several anchors per location, raising one anchor's centre-ness raises the
    scores of that anchor only, not of its location's other anchors."""
    inputs = _atss_inputs()
    inputs["cls_logits"] = [torch.zeros_like(c) for c in inputs["cls_logits"]]  # all 0.5
    inputs["centerness"] = [torch.full_like(c, -8.0) for c in inputs["centerness"]]
    inputs["centerness"][0][:, 4 * 9 + 5] = 8.0  # location 4 of P3, anchor 5 only
    det = postprocess_detections(**inputs, score_thresh=0.2)[0]
    high = det.scores > 0.5  # sqrt(0.5 * sigmoid(8)) = 0.707; the others sqrt(0.5 * 3e-4)
    assert high.sum() == NUM_CLASSES and high[:NUM_CLASSES].all()  # one per class, first
    assert det.level[high].eq(0).all() and det.anchor_idx[high].eq(5).all()
    assert det.yx[high].tolist() == [[0, 4]] * NUM_CLASSES
    high_score = math.sqrt(0.5 * torch.sigmoid(torch.tensor(8.0)).item())
    torch.testing.assert_close(det.scores[:NUM_CLASSES], torch.full((NUM_CLASSES,), high_score))
    low = math.sqrt(0.5 * torch.sigmoid(torch.tensor(-8.0)).item())
    torch.testing.assert_close(det.scores[~high], torch.full_like(det.scores[~high], low))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _single_level(cls: list[list[float]], ctr: list[float]) -> dict:
    """One image, one 1 x N level of points (stride 8, image 8 x 8N), ``cls`` ``(N, 2)`` and
    ``ctr`` ``(N,)`` given as probabilities; every box the 6 x 6 square around its point."""
    n = len(ctr)
    sizes = [(1, n)]
    return dict(
        cls_logits=[torch.tensor([[[_logit(p) for p in row] for row in cls]])],  # (1, N, 2)
        box_regression=[torch.full((1, n, 4), 3 / 8)],  # ltrb in strides: 3 px, disjoint boxes
        centerness=[torch.tensor([[_logit(p) for p in ctr]])],  # (1, N)
        anchors=PointGenerator((8,))(sizes, "cpu"),
        feature_sizes=sizes,
        num_anchors=1,
        box_coder=LTRBBoxCoder(),
        image_sizes=[(8, 8 * n)],
    )


def test_fcos_threshold_is_on_the_class_score_and_topk_on_the_product() -> None:
    """The official FCOS/ATSS convention, by hand, threshold 0.3:

    location 0: cls (0.4, 0.1), ctr 0.01: 0.4 > 0.3 kept although sqrt(0.4 * 0.01) = 0.063;
    location 1: cls (0.29, 0.1), ctr 1: 0.29 < 0.3 dropped although sqrt(0.29 * 1) = 0.54;
    location 2: cls (0.1, 0.9), ctr 0.5: class 1 kept, product 0.45, score 0.671;
    location 3: cls (0.35, 0.1), ctr 0.9: class 0 kept, product 0.315, score 0.561.
    Top-2 by the product keeps 0.45 and 0.315 (by sigmoid(cls) alone: 0.9 and 0.4).
    """
    inputs = _single_level(
        cls=[[0.4, 0.1], [0.29, 0.1], [0.1, 0.9], [0.35, 0.1]], ctr=[0.01, 1.0 - 1e-7, 0.5, 0.9]
    )
    det = postprocess_detections(**inputs, score_thresh=0.3)[0]
    assert det.yx[:, 1].tolist() == [2, 3, 0] and det.labels.tolist() == [1, 0, 0]
    expected = torch.tensor([math.sqrt(0.9 * 0.5), math.sqrt(0.35 * 0.9), math.sqrt(0.4 * 0.01)])
    torch.testing.assert_close(det.scores, expected)
    assert det.scores[2] < 0.3  # kept on its class score, reported with its root product

    top2 = postprocess_detections(**inputs, score_thresh=0.3, topk_candidates=2)[0]
    assert top2.yx[:, 1].tolist() == [2, 3] and top2.labels.tolist() == [1, 0]
    torch.testing.assert_close(top2.scores, expected[:2])

    # the top-k never takes a pair under the threshold, even with room for all of them
    every = postprocess_detections(**inputs, score_thresh=0.3, topk_candidates=8)[0]
    assert len(every) == 3 and 1 not in every.yx[:, 1].tolist()


def test_retinanet_scores_are_the_class_scores() -> None:
    """Without centre-ness, threshold, ranking and score are sigmoid(cls)."""
    inputs = _single_level(cls=[[0.4, 0.1], [0.29, 0.1], [0.1, 0.9], [0.35, 0.1]], ctr=[0.5] * 4)
    inputs["centerness"] = None
    det = postprocess_detections(**inputs, score_thresh=0.3, topk_candidates=2)[0]
    assert det.yx[:, 1].tolist() == [2, 0] and det.labels.tolist() == [1, 0]
    torch.testing.assert_close(det.scores, torch.tensor([0.9, 0.4]))
