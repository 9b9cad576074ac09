"""Inference post-processing shared by the dense detectors (:class:`PostProcess`).

Per level: score every (anchor, class) pair, keep the ``topk_candidates`` best above
``score_thresh`` (one batched ``topk`` over images), decode their boxes. Then for the
whole batch at once: clip to each image, drop boxes that clipping left empty (wholly
outside the image; torchvision keeps them), class-wise NMS with one ``batched_nms`` call
(group id ``image * C + label``) and keep the ``detections_per_img`` best per image.
Only the final step splits the batch into per-image :class:`Detections`, each of which
remembers its level, location ``(row, col)``, anchor index and anchor box so the mask
module can compute its mask.

Scores. RetinaNet (no centre-ness): ``sigmoid(cls)``, thresholded, ranked and reported.
With centre-ness (FCOS, ATSS), as the official FCOS and ATSS code (``FCOSPostProcessor``,
``ATSSPostProcessor``) and AdelaiDet's ``FCOSOutputs.predict_proposals`` do: the candidates
are the pairs whose classification score ``sigmoid(cls)`` alone is above ``score_thresh``;
they are ranked (top-k and NMS) by ``sigmoid(cls) * sigmoid(ctr)`` and reported with
``sqrt(sigmoid(cls) * sigmoid(ctr))``, so a reported score may lie below ``score_thresh``.
torchvision's ``FCOS.postprocess_detections`` thresholds the square-rooted product
instead; following the official code rather than torchvision's is a deliberate difference
(the ``baseline=fcos`` comparison keeps torchvision's own).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from pointins.detectors.box_coders import BoxCoder
from pointins.structures import DenseOutputs, Detections
from pointins.sync_free import count_per_index


def _level_scores(cls_logits: Tensor, centerness: Tensor | None, score_thresh: float) -> Tensor:
    """``(B, HWA, C)`` ranking scores of one level, highest first into the top-k.

    Without centre-ness (RetinaNet): ``sigmoid(cls)``; the threshold applies after the
    top-k (:func:`postprocess_detections`), which selects the same candidates.
    With centre-ness ``(B, HWA)`` logits (FCOS, ATSS), the official FCOS/ATSS convention:
    ``sigmoid(cls) * sigmoid(ctr)``, each anchor's centre-ness scaling its own class scores,
    for the pairs whose ``sigmoid(cls)`` is above ``score_thresh`` and ``-1`` for the others,
    below every candidate's product (``>= 0``), so the top-k takes them last and they are
    dropped after it. The reported score is the square root of the product.
    """
    scores = cls_logits.sigmoid()  # (B, HWA, C)
    if centerness is None:
        return scores
    product = scores * centerness.sigmoid()[..., None]  # (B, HWA, C)
    return product.masked_fill(scores <= score_thresh, -1.0)  # (B, HWA, C)


def _topk_size(scores: Tensor, topk: int) -> int | Tensor:
    """``min(topk, scores.shape[1])``; a traced value when exporting, so that an exported
    graph takes the top-k of every input size rather than of the traced one's."""
    if torch.jit.is_tracing():
        available = torch._shape_as_tensor(scores)[1:2]  # (1,) traced
        return torch.clamp(available, max=topk)[0]
    return min(topk, scores.shape[1])


def _clip_batched(boxes: Tensor, image_sizes: Sequence[tuple[int, int]] | Tensor) -> Tensor:
    """Clip ``(B, K, 4)`` boxes to each image's ``(h, w)`` (a ``(B, 2)`` tensor too).

    The batched form of ``torchvision.ops.clip_boxes_to_image``, which takes one
    size per call.
    """
    if isinstance(image_sizes, Tensor):  # traced in an ONNX export
        hw = image_sizes.to(device=boxes.device, dtype=boxes.dtype)  # (B, 2)
    else:
        hw = torch.as_tensor(image_sizes, dtype=boxes.dtype, device=boxes.device)  # (B, 2)
    upper = hw.flip(-1).repeat(1, 2)[:, None, :]  # (B, 1, 4) as (w, h, w, h)
    return torch.minimum(boxes.clamp(min=0), upper)  # (B, K, 4)


def postprocess_detections(
    cls_logits: Sequence[Tensor],
    box_regression: Sequence[Tensor],
    centerness: Sequence[Tensor] | None,
    anchors: Sequence[Tensor],
    feature_sizes: Sequence[tuple[int, int]],
    num_anchors: int,
    box_coder: BoxCoder,
    image_sizes: Sequence[tuple[int, int]],
    score_thresh: float = 0.05,
    topk_candidates: int = 1000,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> list[Detections]:
    """Turn dense head outputs into per-image detections.

    Args:
        cls_logits: per level ``(B, H_l * W_l * A, C)`` logits.
        box_regression: per level ``(B, H_l * W_l * A, 4)`` box-coder outputs.
        centerness: per level ``(B, H_l * W_l * A)`` logits, or ``None`` (RetinaNet).
        anchors: per level ``(H_l * W_l * A, 4)``, from the anchor generator.
        feature_sizes: per level ``(H_l, W_l)``.
        num_anchors: ``A``.
        box_coder: decodes ``box_regression`` against ``anchors``.
        image_sizes: per image ``(h, w)`` of the un-padded image boxes are clipped to.
        score_thresh: keep candidates whose classification score ``sigmoid(cls)`` is
            strictly above it (with centre-ness, the reported score may be lower).
        topk_candidates: at most this many candidates per level and image before NMS,
            the best by ``sigmoid(cls)``, or with centre-ness by ``sigmoid(cls) *
            sigmoid(ctr)``.
        nms_thresh: IoU threshold of the class-wise NMS.
        detections_per_img: keep the best this many per image after NMS.

    Returns:
        ``B`` :class:`Detections`, each sorted by decreasing score.
    """
    batch, _, num_classes = cls_logits[0].shape
    device = cls_logits[0].device
    fields: dict[str, list[Tensor]] = {
        k: [] for k in ("scores", "labels", "boxes", "anchors", "level", "yx", "anchor_idx")
    }
    candidates: list[Tensor] = []  # per level (B, k): above the threshold
    for level, (_, width) in enumerate(feature_sizes):
        ctr = None if centerness is None else centerness[level]
        scores = _level_scores(cls_logits[level], ctr, score_thresh)  # (B, HWA, C)
        scores = scores.reshape(batch, -1)  # (B, HWA * C), class fastest
        top_scores, top_idx = scores.topk(_topk_size(scores, topk_candidates), dim=1)  # (B, k)
        if centerness is None:
            candidates.append(top_scores > score_thresh)
        else:  # ranked by the product, -1 below the threshold; reported as its root
            candidates.append(top_scores >= 0)
            top_scores = top_scores.clamp(min=0).sqrt()
        k = top_idx.shape[1]
        anchor_in_level = top_idx // num_classes  # (B, k) flat index (y * W + x) * A + a
        location = anchor_in_level // num_anchors  # (B, k) y * W + x
        reg = torch.gather(
            box_regression[level], 1, anchor_in_level[..., None].expand(batch, k, 4)
        )  # (B, k, 4)
        level_anchors = anchors[level][anchor_in_level]  # (B, k, 4)

        fields["scores"].append(top_scores)
        fields["labels"].append(top_idx % num_classes)
        fields["boxes"].append(box_coder.decode(level_anchors, reg))  # (B, k, 4)
        fields["anchors"].append(level_anchors)
        fields["level"].append(torch.full_like(top_idx, level))
        fields["yx"].append(torch.stack([location // width, location % width], dim=-1))  # (B,k,2)
        fields["anchor_idx"].append(anchor_in_level % num_anchors)

    cat = {name: torch.cat(values, dim=1) for name, values in fields.items()}  # (B, K, ...)
    candidate = torch.cat(candidates, dim=1)  # (B, K)
    cat["boxes"] = _clip_batched(cat["boxes"], image_sizes)
    num_cand = cat["scores"].shape[1]
    cat["image"] = torch.arange(batch, device=device)[:, None].expand(batch, num_cand)  # (B, K)

    boxes = cat["boxes"]
    non_empty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])  # (B, K)
    keep = candidate & non_empty  # (B, K)
    keep_idx = torch.nonzero(keep.flatten()).squeeze(1)  # (M,), the one unavoidable sync
    flat = {
        name: value.flatten(0, 1)[keep_idx]  # (B, K, ...) -> (B * K, ...) -> (M, ...)
        for name, value in cat.items()
    }

    groups = flat["image"] * num_classes + flat["labels"]  # (M,)
    # kept: indices into the M candidates, by decreasing score
    kept = batched_nms(flat["boxes"].float(), flat["scores"].float(), groups, nms_thresh)
    if batch == 1:  # one image: no regrouping, no split (an exported graph's path)
        out = {name: (value[kept[:detections_per_img]],) for name, value in flat.items()}
    else:
        image_of_kept = flat["image"][kept]
        kept = kept[torch.argsort(image_of_kept, stable=True)]  # by image, score desc within
        image_of_kept = flat["image"][kept]
        counts = count_per_index(image_of_kept, batch)  # (B,)
        starts = torch.cumsum(counts, 0) - counts  # (B,)
        rank = torch.arange(kept.shape[0], device=device) - starts[image_of_kept]  # in image
        kept = kept[rank < detections_per_img]
        counts = counts.clamp(max=detections_per_img)
        out = {name: value[kept].split(counts.tolist()) for name, value in flat.items()}
    return [
        Detections(
            boxes=out["boxes"][i],
            scores=out["scores"][i],
            labels=out["labels"][i],
            level=out["level"][i],
            yx=out["yx"][i],
            anchor_idx=out["anchor_idx"][i],
            anchors=out["anchors"][i],
        )
        for i in range(batch)
    ]


class PostProcess:
    """A dense detector's inference part: thresholds, per-level top-k, class-wise NMS
    (:func:`postprocess_detections`)."""

    def __init__(
        self,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        self.score_thresh = float(score_thresh)
        self.topk_candidates = int(topk_candidates)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)

    def __call__(
        self,
        outputs: DenseOutputs,
        anchors: Sequence[Tensor],
        feature_sizes: Sequence[tuple[int, int]],
        num_anchors: int,
        box_coder: BoxCoder,
        image_sizes: Sequence[tuple[int, int]],
    ) -> list[Detections]:
        return postprocess_detections(
            outputs.cls_logits,
            outputs.box_regression,
            outputs.centerness,
            anchors,
            feature_sizes,
            num_anchors,
            box_coder,
            image_sizes,
            score_thresh=self.score_thresh,
            topk_candidates=self.topk_candidates,
            nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img,
        )

    def __repr__(self) -> str:
        return (
            f"PostProcess(score_thresh={self.score_thresh}, topk_candidates="
            f"{self.topk_candidates}, nms_thresh={self.nms_thresh}, "
            f"detections_per_img={self.detections_per_img})"
        )
