"""Where a checkpoint's masks lose: mask IoU of matched detections per FPN level and per
object size, against oracles at the mask's own size and at a finer one; boundary quality;
and the mask AP lost to ranking.

    python -m benchmarks.mask_quality --ckpt outputs/.../checkpoints/last.ckpt
    python -m benchmarks.mask_quality --ckpt ... --picture q.png data.root=data/shapes_s1

For every val detection scoring at least ``--score-thresh`` whose box overlaps a GT box
with IoU ≥ 0.5, two masks are compared with that GT mask in the network's input pixels:

* the prediction: the detection's ``2K×2K`` probabilities pasted into its box;
* the oracle: the GT mask cropped to the *same box* at ``2K×2K``, exactly as the training
  targets are made (:func:`pointins.mask.sampling.mask_targets`), and pasted the same way.

The oracle is the best a perfect mask head could score in that box at that resolution, so
the gap between the two columns is what the mask module (not the box, not the output
resolution) loses. A second oracle, cropped at ``--oracle-scale`` times the mask's side,
says what a finer output alone would gain: its gap to the first oracle is the resolution's
share, the gap from the prediction to the first oracle the head's. The boundary F-score
(pixels of the predicted and GT contours within ``BOUNDARY_TOLERANCE`` px of each other)
shows rounded corners and filled holes, which area IoU forgives on large objects. Rows are
the FPN levels the detections came from (for RetinaNet and FCOS, object size) and COCO's
size ranges.

Ranking: mask AP is computed three times with the dataset's evaluator: with the detector's
scores (also for a checkpoint trained with ``maskness``, whose predictions are the second
ranking); with them rescored by the masks' own confidence (``maskness``, what
``model.mask.maskness=true`` does at inference); and with every detection scored by its
mask's IoU with the best GT mask of its class (an oracle ranking: the same masks, the best
order). The last minus the first is the AP lost because detections with poor masks outrank
ones with good masks; the middle one shows how much of it maskness recovers.

``--picture`` writes, for detections from P5 and up, the image crop beside an overlay:
green where prediction and GT agree, red predicted only, blue GT only. Trailing arguments
are Hydra overrides of ``conf/train.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from torchvision.ops import box_iou

from benchmarks.config import compose_config
from pointins.mask.paste import paste_masks
from pointins.mask.sampling import mask_targets
from pointins.mask.scoring import maskness
from pointins.model import queries_from_detections
from pointins.structures import Detections

log = logging.getLogger("mask_quality")

#: A detection counts when its box overlaps a GT box at least this much (COCO AP50's bar).
MATCH_IOU = 0.5
#: a contour pixel counts as matched within this distance (pixels, chessboard) of the other
BOUNDARY_TOLERANCE = 2
#: COCO's size ranges (GT area in input pixels)
SIZES = (("small", 0, 32**2), ("medium", 32**2, 96**2), ("large", 96**2, float("inf")))
#: columns of the rows of :func:`matched_mask_quality`
LEVEL, IOU, ORACLE, ORACLE_FINE, AREA, BOUNDARY_F = range(6)


def _mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """(n, H, W) bool, (n, H, W) bool -> (n,) IoU (0 where both are empty)."""
    inter = (a & b).flatten(1).sum(1)
    union = (a | b).flatten(1).sum(1)
    return inter / union.clamp(min=1)


def _contour(masks: Tensor) -> Tensor:
    """(m, H, W) bool -> (m, H, W) bool: mask pixels with a 4-neighbour outside the mask
    (the image border counts as outside)."""
    inverted = (~masks).float()[:, None]  # (m, 1, H, W)
    outside_near = torch.nn.functional.max_pool2d(
        torch.nn.functional.pad(inverted, (1, 1, 1, 1), value=1.0), 3, stride=1
    )[:, 0]  # (m, H, W): an outside pixel in the 3x3 window
    return masks & outside_near.bool()


def boundary_f_score(predicted: Tensor, gt: Tensor, tolerance: int = BOUNDARY_TOLERANCE) -> Tensor:
    """(m, H, W) bool masks -> (m,) F-score of their contours: precision is the share of
    predicted contour pixels within ``tolerance`` px of the GT contour, recall the other way
    round (the DAVIS / Cityscapes-style boundary measure). Both contours empty: 1."""
    pred_c, gt_c = _contour(predicted), _contour(gt)  # (m, H, W)
    size = 2 * tolerance + 1

    def near(c: Tensor) -> Tensor:
        pooled = torch.nn.functional.max_pool2d(c.float()[:, None], size, 1, tolerance)
        return pooled[:, 0].bool()  # (m, H, W)

    pred_n, gt_n = pred_c.flatten(1).sum(1), gt_c.flatten(1).sum(1)  # (m,)
    precision = (pred_c & near(gt_c)).flatten(1).sum(1) / pred_n.clamp(min=1)
    recall = (gt_c & near(pred_c)).flatten(1).sum(1) / gt_n.clamp(min=1)
    f = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return torch.where((pred_n == 0) & (gt_n == 0), torch.ones_like(f), f)


def matched_mask_quality(
    det: Detections,
    gt_boxes: Tensor,
    gt_masks: Tensor,
    image_size: tuple[int, int],
    strides: Sequence[int],
    score_thresh: float = 0.3,
    oracle_scale: int = 4,
) -> Tensor:
    """One row per matched detection of one image.

    Args:
        det: detections with ``masks`` ``(n, S, S)`` box-relative probabilities.
        gt_boxes: ``(G, 4)`` GT boxes in input pixels.
        gt_masks: ``(G, H_pad, W_pad)`` GT masks in input pixels (padded like the batch).
        image_size: ``(h, w)`` of the un-padded input image.
        strides: the detector's FPN strides.
        oracle_scale: side of the finer oracle over ``S``.

    Returns:
        ``(m, 6)`` float rows: level, mask IoU, oracle IoU at ``S``, oracle IoU at
        ``oracle_scale * S``, GT area in pixels, boundary F-score (columns ``LEVEL`` ...).
    """
    det, gt_idx = match_detections(det, gt_boxes, score_thresh)
    if len(det) == 0:
        return torch.zeros((0, 6))
    h, w = image_size
    size = det.masks.shape[-1]
    queries = queries_from_detections([det], strides)
    queries.gt_idx = gt_idx
    gt = gt_masks[gt_idx, :h, :w].bool()  # (m, h, w)
    predicted = paste_masks(det.masks.float(), det.boxes, (h, w))  # (m, h, w) bool
    oracles = [
        paste_masks(mask_targets([gt_masks], queries, side), det.boxes, (h, w))
        for side in (size, oracle_scale * size)
    ]  # the GT cropped at S and at oracle_scale * S, pasted back: (m, h, w) each
    area = gt.flatten(1).sum(1).float()
    columns = [
        det.level.float(),
        _mask_iou(predicted, gt),
        *(_mask_iou(o, gt) for o in oracles),
        area,
        boundary_f_score(predicted, gt),
    ]
    return torch.stack(columns, dim=1)


def match_detections(
    det: Detections, gt_boxes: Tensor, score_thresh: float
) -> tuple[Detections, Tensor]:
    """The detections scoring at least ``score_thresh`` whose box overlaps a GT box at
    IoU >= ``MATCH_IOU``, in score order, and the index of that GT box for each."""
    det = det[det.scores >= score_thresh]
    if len(det) == 0 or len(gt_boxes) == 0:
        return det[:0], torch.zeros(0, dtype=torch.long)
    box_overlap, gt_idx = box_iou(det.boxes, gt_boxes).max(dim=1)  # (n,), (n,)
    matched = box_overlap >= MATCH_IOU
    return det[matched], gt_idx[matched]


def summary_table(rows: Tensor, num_levels: int, oracle_scale: int = 4) -> str:
    """Markdown: per level, per COCO size range and in all: count, median GT area, mean mask
    IoU of the prediction, of the oracle at the mask's size and at ``oracle_scale`` times
    it, the mean boundary F-score, and the share of prediction and oracle at IoU ≥ 0.75
    (the bar of COCO's AP75)."""
    lines = [
        "| rows | detections | median GT area (px) | mask IoU | oracle IoU "
        f"| oracle IoU ({oracle_scale}x side) | boundary F | IoU ≥ 0.75 | oracle IoU ≥ 0.75 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    area = rows[:, AREA]
    groups = [(f"P{lvl + 3}", rows[:, LEVEL] == lvl) for lvl in range(num_levels)]
    groups += [(name, (area >= lo) & (area < hi)) for name, lo, hi in SIZES]
    for name, sel in [*groups, ("all", torch.ones(len(rows), dtype=torch.bool))]:
        r = rows[sel]
        if len(r) == 0:
            continue
        lines.append(
            f"| {name} | {len(r)} | {r[:, AREA].median():.0f} | {r[:, IOU].mean():.3f} "
            f"| {r[:, ORACLE].mean():.3f} | {r[:, ORACLE_FINE].mean():.3f} "
            f"| {r[:, BOUNDARY_F].mean():.3f} | {(r[:, IOU] >= 0.75).float().mean():.2f} "
            f"| {(r[:, ORACLE] >= 0.75).float().mean():.2f} |"
        )
    return "\n".join(lines)


def oracle_ranking_scores(
    masks: Tensor, labels: Tensor, gt_masks: Tensor, gt_labels: Tensor
) -> Tensor:
    """(n, h, w) bool predicted masks -> (n,) each one's IoU with the best GT mask of its
    class in the image (0 without one): the score of the oracle ranking."""
    if len(masks) == 0 or len(gt_masks) == 0:
        return torch.zeros(len(masks))
    pred = masks.flatten(1).float()  # (n, hw)
    gt = gt_masks.flatten(1).float()  # (G, hw)
    inter = pred @ gt.T  # (n, G)
    union = pred.sum(1, keepdim=True) + gt.sum(1) - inter  # (n, G)
    iou = inter / union.clamp(min=1)
    iou = torch.where(labels[:, None] == gt_labels[None, :], iou, 0.0)  # (n, G)
    return iou.max(dim=1).values


def overlay_tile(image: Tensor, predicted: Tensor, gt: Tensor, box: Tensor) -> Tensor:
    """(3, h, w) image, (h, w) bool masks, GT box -> (3, t, 2t) uint8 crop | overlay."""
    x1, y1 = (int(v) for v in box[:2].floor().clamp(min=0).tolist())
    x2, y2 = (int(v) for v in box[2:].ceil().tolist())
    crop = image[:, y1:y2, x1:x2]
    crop = (crop - crop.min()) / (crop.max() - crop.min()).clamp(min=1e-6)
    p, g = predicted[y1:y2, x1:x2], gt[y1:y2, x1:x2]
    overlay = torch.stack([p & ~g, p & g, g & ~p]).float()  # red, green, blue
    tile = torch.cat([crop, overlay], dim=2)[None]  # (1, 3, h, 2w)
    tile = torch.nn.functional.interpolate(tile, size=(128, 256), mode="nearest")[0]
    return (tile * 255).to(torch.uint8)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a PointINS checkpoint (last.ckpt)")
    parser.add_argument("--experiment", default="shapes")
    parser.add_argument("--images", type=int, default=120, help="val images to read")
    parser.add_argument("--score-thresh", type=float, default=0.3)
    parser.add_argument("--oracle-scale", type=int, default=4, help="finer oracle's side / S")
    parser.add_argument("--picture", help="PNG of P5+ detections: crop | overlay")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")

    from eval import load_checkpoint  # the entry point's loader: checks the classes
    from pointins.engine.runner import build_datamodule

    cfg = compose_config([*args.overrides], experiment=args.experiment)
    datamodule = build_datamodule(cfg)
    datamodule.setup("validate")
    module = load_checkpoint(args.ckpt, class_names=datamodule.class_names)
    model = module.model.eval()
    if getattr(model, "mask", None) is None:
        raise SystemExit(f"--ckpt {args.ckpt}: the checkpoint has no mask module (mask=none)")
    # the detector's own scores select and rank ("as scored"); a checkpoint trained with
    # model.mask.maskness=true predicts with the "maskness" ranking
    rescored = model.maskness
    model.maskness = False
    strides = model.detector.strides
    with tempfile.TemporaryDirectory() as tmp:
        evaluators = {
            name: datamodule.build_evaluator(Path(tmp) / name)
            for name in ("as scored", "maskness", "oracle ranking")
        }
        rows, tiles, seen = [], [], 0
        for batch in datamodule.val_dataloader():
            if seen >= args.images:
                break
            with torch.no_grad():
                detections = model.detect(batch.images, batch.image_sizes)
            keep = min(len(detections), args.images - seen)
            for b, det in enumerate(detections[:keep]):
                t, size = batch.targets[b], batch.image_sizes[b]
                rows.append(
                    matched_mask_quality(
                        det,
                        t["boxes"],
                        t["masks"],
                        size,
                        strides,
                        args.score_thresh,
                        args.oracle_scale,
                    )  # fmt: skip
                )
                if args.picture and len(tiles) < 24:
                    tiles.extend(_tiles(batch.images[b], det, t, size, args.score_thresh))
                rankings = _predictions(det, t, size, batch.orig_sizes[b])
                for name, prediction in rankings.items():
                    evaluators[name].update([batch.image_ids[b]], [prediction])
            seen += keep
        ap = {name: evaluator.compute()["segm/AP"] for name, evaluator in evaluators.items()}
    lost = ap["oracle ranking"] - ap["as scored"]
    text = (
        f"{args.ckpt}: {seen} val images, detections scoring >= {args.score_thresh} "
        f"(detector scores{'; the checkpoint predicts with maskness' if rescored else ''})\n\n"
        + summary_table(torch.cat(rows), len(strides), args.oracle_scale)
        + "\n\n| ranking | segm AP |\n|---|---:|\n"
        + "".join(f"| {name} | {value:.1f} |\n" for name, value in ap.items())
        + f"\n{lost:.1f} segm AP lost to ranking (oracle ranking minus as scored)"
    )
    print(text)
    if args.picture:
        _save_picture(tiles[:24], args.picture)
        log.info("wrote %s", args.picture)
    return text


def _predictions(det: Detections, target: dict, size, orig_size) -> dict[str, dict]:
    """The evaluator's prediction for one image under each ranking: as scored, rescored by
    maskness, and scored by mask IoU with the best same-class GT (input resolution)."""
    (h, w), (h0, w0) = size, orig_size
    masks = paste_masks(det.masks.float(), det.boxes, (h, w))  # (n, h, w) bool
    gt = target["masks"][:, :h, :w].bool()
    quality = oracle_ranking_scores(masks, det.labels, gt, target["labels"])  # (n,)
    scale = det.boxes.new_tensor([w0 / w, h0 / h, w0 / w, h0 / h])
    boxes = det.boxes * scale  # original pixels
    scored = {
        "boxes": boxes,
        "scores": det.scores,
        "labels": det.labels,
        "masks": paste_masks(det.masks.float(), boxes, (h0, w0)),
    }
    return {
        "as scored": scored,
        "maskness": {**scored, "scores": det.scores * maskness(det.masks.float())},
        # ties in mask IoU broken by the detection score
        "oracle ranking": {**scored, "scores": quality + 1e-6 * det.scores},
    }


def _tiles(image: Tensor, det: Detections, target: dict, size, score_thresh: float) -> list:
    """At most one tile per image: its best-scoring matched detection from P5 or up."""
    det, gt_idx = match_detections(det, target["boxes"], score_thresh)
    coarse = (det.level >= 2).nonzero().flatten()
    if len(coarse) == 0:
        return []
    k = int(coarse[0])  # detections are sorted by score
    h, w = size
    predicted = paste_masks(det.masks[k : k + 1].float(), det.boxes[k : k + 1], (h, w))[0]
    gt = target["masks"][gt_idx[k], :h, :w].bool()
    return [overlay_tile(image[:, :h, :w], predicted, gt, target["boxes"][gt_idx[k]])]


def _save_picture(tiles: list[Tensor], path: str) -> None:
    from PIL import Image

    columns = 4
    tiles = tiles[: len(tiles) - len(tiles) % columns] or tiles
    rows = [torch.cat(tiles[i : i + columns], dim=2) for i in range(0, len(tiles), columns)]
    grid = torch.cat([r for r in rows if r.shape == rows[0].shape], dim=1)  # (3, H, W)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


if __name__ == "__main__":
    main()
