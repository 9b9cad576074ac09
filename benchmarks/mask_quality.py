"""Where a checkpoint's masks lose: mask IoU of matched detections per FPN level, against
the ``2K×2K`` oracle.

    python -m benchmarks.mask_quality --ckpt outputs/.../checkpoints/last.ckpt
    python -m benchmarks.mask_quality --ckpt ... --picture q.png data.root=data/shapes_s1

For every val detection scoring at least ``--score-thresh`` whose box overlaps a GT box
with IoU ≥ 0.5, two masks are compared with that GT mask in the network's input pixels:

* the prediction: the detection's ``2K×2K`` probabilities pasted into its box;
* the oracle: the GT mask cropped to the *same box* at ``2K×2K``, exactly as the training
  targets are made (:func:`pointins.mask.sampling.mask_targets`), and pasted the same way.

The oracle is the best a perfect mask head could score in that box at that resolution, so
the gap between the two columns is what the mask module (not the box, not the output
resolution) loses. Rows are the FPN levels the detections came from, which for RetinaNet
and FCOS is object size. ``--picture`` writes, for detections from P5 and up, the image
crop beside an overlay: green where prediction and GT agree, red predicted only, blue GT
only. Trailing arguments are Hydra overrides of ``conf/train.yaml``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from benchmarks.config import compose_config
from pointins.mask.paste import paste_masks
from pointins.mask.sampling import mask_targets
from pointins.model import queries_from_detections
from pointins.structures import Detections

log = logging.getLogger("mask_quality")

#: A detection counts when its box overlaps a GT box at least this much (COCO AP50's bar).
MATCH_IOU = 0.5


def _mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """(n, H, W) bool, (n, H, W) bool -> (n,) IoU (0 where both are empty)."""
    inter = (a & b).flatten(1).sum(1)
    union = (a | b).flatten(1).sum(1)
    return inter / union.clamp(min=1)


def matched_mask_quality(
    det: Detections,
    gt_boxes: Tensor,
    gt_masks: Tensor,
    image_size: tuple[int, int],
    strides: Sequence[int],
    score_thresh: float = 0.3,
) -> Tensor:
    """One row per matched detection of one image.

    Args:
        det: detections with ``masks`` ``(n, S, S)`` box-relative probabilities.
        gt_boxes: ``(G, 4)`` GT boxes in input pixels.
        gt_masks: ``(G, H_pad, W_pad)`` GT masks in input pixels (padded like the batch).
        image_size: ``(h, w)`` of the un-padded input image.
        strides: the detector's FPN strides.

    Returns:
        ``(m, 4)`` float rows ``(level, mask IoU, oracle IoU, GT area in pixels)``.
    """
    det, gt_idx = match_detections(det, gt_boxes, score_thresh)
    if len(det) == 0:
        return torch.zeros((0, 4))
    h, w = image_size
    size = det.masks.shape[-1]
    queries = queries_from_detections([det], strides)
    queries.gt_idx = gt_idx
    oracle = mask_targets([gt_masks], queries, size)  # (m, S, S) in {0, 1}
    gt = gt_masks[gt_idx, :h, :w].bool()  # (m, h, w)
    predicted_iou = _mask_iou(paste_masks(det.masks.float(), det.boxes, (h, w)), gt)
    oracle_iou = _mask_iou(paste_masks(oracle, det.boxes, (h, w)), gt)
    area = gt.flatten(1).sum(1).float()
    return torch.stack([det.level.float(), predicted_iou, oracle_iou, area], dim=1)


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


def summary_table(rows: Tensor, num_levels: int) -> str:
    """Markdown: per level and in all, count, median GT area, mean IoU of prediction and
    oracle, and the share of each at IoU ≥ 0.75 (the bar of COCO's AP75)."""
    lines = [
        "| level | detections | median GT area (px) | mask IoU | oracle IoU "
        "| IoU ≥ 0.75 | oracle IoU ≥ 0.75 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    groups = [(f"P{lvl + 3}", rows[:, 0] == lvl) for lvl in range(num_levels)]
    for name, sel in [*groups, ("all", torch.ones(len(rows), dtype=torch.bool))]:
        r = rows[sel]
        if len(r) == 0:
            continue
        lines.append(
            f"| {name} | {len(r)} | {r[:, 3].median():.0f} | {r[:, 1].mean():.3f} "
            f"| {r[:, 2].mean():.3f} | {(r[:, 1] >= 0.75).float().mean():.2f} "
            f"| {(r[:, 2] >= 0.75).float().mean():.2f} |"
        )
    return "\n".join(lines)


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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a PointINS checkpoint (last.ckpt)")
    parser.add_argument("--experiment", default="shapes")
    parser.add_argument("--images", type=int, default=120, help="val images to read")
    parser.add_argument("--score-thresh", type=float, default=0.3)
    parser.add_argument("--picture", help="PNG of P5+ detections: crop | overlay")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")

    from eval import load_checkpoint  # the entry point's loader: checks the classes
    from pointins.runner import build_datamodule

    cfg = compose_config([*args.overrides], experiment=args.experiment)
    datamodule = build_datamodule(cfg)
    datamodule.setup("validate")
    module = load_checkpoint(args.ckpt, class_names=datamodule.class_names)
    model = module.model.eval()
    if model.mask is None:
        raise SystemExit(f"--ckpt {args.ckpt}: the checkpoint has no mask module (mask=none)")
    strides = model.detector.strides
    rows, tiles, seen = [], [], 0
    for batch in datamodule.val_dataloader():
        if seen >= args.images:
            break
        with torch.no_grad():
            detections = model.detect(batch.images, batch.image_sizes)
        detections = detections[: args.images - seen]
        for b, det in enumerate(detections):
            t, size = batch.targets[b], batch.image_sizes[b]
            r = matched_mask_quality(det, t["boxes"], t["masks"], size, strides, args.score_thresh)
            rows.append(r)
            if args.picture and len(tiles) < 24:
                tiles.extend(_tiles(batch.images[b], det, t, size, args.score_thresh))
        seen += len(detections)
    table = summary_table(torch.cat(rows), len(strides))
    print(f"{args.ckpt}: {seen} val images, detections scoring >= {args.score_thresh}\n")
    print(table)
    if args.picture:
        _save_picture(tiles[:24], args.picture)
        log.info("wrote %s", args.picture)


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
