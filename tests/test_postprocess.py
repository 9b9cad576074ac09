"""Post-processing: equivalence with a per-image reference and the properties users rely on."""

from __future__ import annotations

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
    """torchvision's RetinaNet/FCOS post-processing, one image and one level at a time."""
    results = []
    for i, image_size in enumerate(inputs["image_sizes"]):
        boxes_all, scores_all, labels_all = [], [], []
        for level in range(len(inputs["feature_sizes"])):
            scores = torch.sigmoid(inputs["cls_logits"][level][i])  # (HWA, C)
            if inputs["centerness"] is not None:
                ctr = torch.sigmoid(inputs["centerness"][level][i])  # (HWA,)
                scores = torch.sqrt(scores * ctr[:, None])
            scores = scores.flatten()
            keep = scores > score_thresh
            scores, idxs = scores[keep], torch.nonzero(keep).flatten()
            scores, order = scores.topk(min(topk, idxs.numel()))
            idxs = idxs[order]
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
        assert torch.all(det.scores[:-1] >= det.scores[1:]) and torch.all(det.scores > 0.05)
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
    assert len(det) > 0
    assert det.level.eq(0).all() and det.anchor_idx.eq(5).all()
    assert det.yx.tolist() == [[0, 4]] * len(det)
