"""Training queries for the mask module (paper §3.3, T8–T10) and their mask targets.

A *candidate* is a triple (point, anchor, target box): an anchor of a location that
satisfies the detector's *anchor condition* for some ground-truth (GT) box, and a
target box drawn for it from {anchor, GT box, regressed box}. A candidate is
*positive* when

* the anchor condition holds (the detector's assigner decides it: RetinaNet
  ``IoU(anchor, GT) > t_a``; FCOS and ATSS: the anchor is a positive of the GT; see
  ``mask_anchor_condition`` in ``pointins/detectors/assigners.py``), and
* ``IoU(target box, GT) > t_b``.

At most ``num_samples`` positives per image are kept, uniformly at random; each
becomes one row of :class:`~pointins.structures.InstanceQueries`. The same point may
be sampled several times (through several of its anchors).

Sampling is vectorised over images, anchors and GTs: the GT is padded to ``(B, G)``
(see ``pointins/detectors/assigners.py::pad_targets``) and the only data-dependent
step is one ``nonzero`` over the ``(B, N)`` anchor-condition matrix. The mask targets
are cropped image by image (:func:`mask_targets`: one ``roi_align`` per image, at the
image's own size).

Index arithmetic (package conventions, ``pointins/structures.py``): anchors of all
levels are concatenated, level ``l`` occupying ``H_l * W_l * A`` consecutive rows
starting at ``offset_l = sum_{k<l} H_k * W_k * A``; within a level
``local = (y * W_l + x) * A + a``. :func:`decode_anchor_index` inverts this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import roi_align

from pointins.structures import DetectorState, InstanceQueries
from pointins.sync_free import count_per_index, to_device

#: Target-box types, the values of :attr:`SamplingInfo.box_type`.
ANCHOR_BOX, GT_BOX, REGRESSED_BOX = 0, 1, 2


@dataclass
class SamplingInfo:
    """Book-keeping of one :func:`sample_queries` call (for tests, logs, debugging).

    ``N`` = number of returned queries, ``M`` = number of candidates (anchors satisfying
    the anchor condition, over the whole batch) *before* the ``t_b`` filter.
    """

    flat_idx: Tensor  # (N,) long, row of the concatenated anchors of every query
    anchor_idx: Tensor  # (N,) long, a in 0..A-1
    box_type: Tensor  # (N,) long, ANCHOR_BOX / GT_BOX / REGRESSED_BOX
    candidate_box_type: Tensor  # (M,) long, type drawn for every candidate (before t_b)
    num_candidates: Tensor  # (B,) long, candidates per image
    num_positives: Tensor  # (B,) long, positives per image before the num_samples cap


@dataclass
class QuerySampler:
    """§3.3 / T8–T10: the mask module's training queries and their targets.

    From a detector's training state and the anchor condition (which GT each anchor
    qualifies for, decided by the detector's assigner with ``t_a = anchor_iou``), draws the
    (point, anchor, target box) samples (:func:`sample_queries`) and crops their
    ``2K x 2K`` mask targets from the GT masks (:func:`mask_targets`).
    """

    anchor_iou: float = 0.5  # t_a
    box_iou: float = 0.5  # t_b
    target_box_probs: Sequence[float] = (0.05, 0.05, 0.9)  # (anchor, GT, regressed)
    num_samples: int | None = 128  # per image; None = all

    def __call__(
        self,
        state: DetectorState,
        anchor_gt: Tensor,
        gt_masks: Sequence[Tensor],
        mask_size: int,
        generator: torch.Generator | None = None,
    ) -> tuple[InstanceQueries, Tensor]:
        """Queries ``(Q rows)`` and their mask targets ``(Q, mask_size, mask_size)``.

        Args:
            state: the detector's training state (anchors, levels, predicted boxes, GT).
            anchor_gt: ``(B, N)`` long, from the detector's ``mask_anchor_condition``.
            gt_masks: one ``(G_i, h_i, w_i)`` mask tensor per image, in input pixels.
            mask_size: ``2K``.
            generator: RNG of the draws (a function of the step in training).
        """
        queries, _ = sample_queries(
            state.anchors,
            state.level_ids,
            state.feature_sizes,
            state.strides,
            state.num_anchors,
            anchor_gt,
            state.pred_boxes,
            state.gt_boxes,
            state.gt_valid,
            box_iou_thresh=self.box_iou,
            target_box_probs=self.target_box_probs,
            num_samples=self.num_samples,
            generator=generator,
        )
        return queries, mask_targets(gt_masks, queries, mask_size)


def paired_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Element-wise IoU of two ``(M, 4)`` xyxy box sets -> ``(M,)``.

    ``torchvision.ops.box_iou`` computes the full ``(M, M)`` matrix; only its diagonal is
    needed here. Degenerate pairs (zero union) get IoU 0.
    """
    lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])  # (M, 2)
    rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])  # (M, 2)
    wh = (rb - lt).clamp(min=0)  # (M, 2)
    inter = wh[:, 0] * wh[:, 1]  # (M,)
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp(min=0) * (boxes1[:, 3] - boxes1[:, 1]).clamp(min=0)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp(min=0) * (boxes2[:, 3] - boxes2[:, 1]).clamp(min=0)
    union = area1 + area2 - inter  # (M,)
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def draw_box_types(
    num: int,
    probs: Sequence[float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Draw ``num`` target-box types i.i.d. from ``probs`` = (anchor, GT, regressed).

    A uniform draw ``u ∈ [0, 1)`` is compared against the cumulative probabilities
    (``searchsorted``), so zero-probability types are never drawn. ``probs`` is
    normalised to sum 1. The draw happens on the generator's device (if given), then
    moves to ``device``.

    Returns:
        ``(num,)`` long in ``{ANCHOR_BOX, GT_BOX, REGRESSED_BOX}``.
    """
    p = torch.as_tensor([float(x) for x in probs], dtype=torch.float64)
    if p.numel() != 3 or bool((p < 0).any()) or float(p.sum()) <= 0:
        raise ValueError(
            f"sampling.py: target_box_probs must be 3 non-negative numbers (anchor, GT, "
            f"regressed) with a positive sum, got {list(probs)}; fix `mask.sampling."
            f"target_box_probs`."
        )
    cum = (p.cumsum(0) / p.sum()).float()  # (3,)
    cum[-1] = 1.0  # guard against rounding: u < 1 always lands in a bin
    draw_device = generator.device if generator is not None else torch.device(device)
    u = torch.rand(num, generator=generator, device=draw_device)  # (num,) in [0, 1)
    types = torch.searchsorted(to_device(cum, draw_device), u, right=True)  # (num,) in 0..3
    return types.clamp(max=2).to(device)


def _randperm(num: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    draw_device = generator.device if generator is not None else device
    return torch.randperm(num, generator=generator, device=draw_device).to(device)


def level_offsets(feature_sizes: Sequence[tuple[int, int]], num_anchors: int) -> list[int]:
    """First row of every level in the concatenated anchors, plus the total: ``L + 1`` ints."""
    offsets = [0]
    for h, w in feature_sizes:
        offsets.append(offsets[-1] + int(h) * int(w) * int(num_anchors))
    return offsets


def decode_anchor_index(
    flat_idx: Tensor,
    level_ids: Tensor,
    feature_sizes: Sequence[tuple[int, int]],
    num_anchors: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split rows of the concatenated anchors into ``(level, y, x, a)``.

    With ``offset_l`` from :func:`level_offsets`:
    ``local = flat - offset_l``, ``a = local % A``, ``loc = local // A = y * W_l + x``,
    ``y = loc // W_l``, ``x = loc % W_l``.

    Args:
        flat_idx: ``(M,)`` long rows of the concatenated anchors.
        level_ids: ``(N,)`` long level of every concatenated anchor.
        feature_sizes: ``(H_l, W_l)`` per level.
        num_anchors: ``A``.

    Returns:
        ``level``, ``y``, ``x``, ``a``, each ``(M,)`` long.
    """
    device = flat_idx.device
    offsets = to_device(level_offsets(feature_sizes, num_anchors)[:-1], device)  # (L,)
    widths = to_device([int(w) for _, w in feature_sizes], device)  # (L,)
    level = level_ids[flat_idx].long()  # (M,)
    local = flat_idx - offsets[level]  # (M,) index within the level
    a = local % num_anchors  # (M,)
    loc = torch.div(local, num_anchors, rounding_mode="floor")  # (M,) = y * W_l + x
    w_l = widths[level]  # (M,)
    y = torch.div(loc, w_l, rounding_mode="floor")  # (M,)
    x = loc % w_l  # (M,)
    return level, y, x, a


def sample_queries(
    anchors: Tensor,
    level_ids: Tensor,
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    num_anchors: int,
    anchor_gt: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    gt_valid: Tensor,
    box_iou_thresh: float = 0.5,
    target_box_probs: Sequence[float] = (0.05, 0.05, 0.9),
    num_samples: int | None = 128,
    generator: torch.Generator | None = None,
) -> tuple[InstanceQueries, SamplingInfo]:
    """Sample the training queries of a batch (paper §3.3).

    Args:
        anchors: ``(N, 4)`` anchors of all levels concatenated (FCOS: stride cells).
        level_ids: ``(N,)`` long level of every anchor.
        feature_sizes: ``(H_l, W_l)`` per level.
        strides: stride of every level in pixels.
        num_anchors: ``A``, anchors per location.
        anchor_gt: ``(B, N)`` long, the GT satisfying the anchor condition, ``-1`` otherwise
            (the assigner's ``mask_anchor_condition``).
        pred_boxes: ``(B, N, 4)`` decoded regressed boxes; detached here.
        gt_boxes: ``(B, G, 4)`` padded GT boxes; gt_valid: ``(B, G)`` bool.
        box_iou_thresh: ``t_b``, positives need ``IoU(target box, GT) > t_b``.
        target_box_probs: probabilities of the target-box types (anchor, GT, regressed), T10.
        num_samples: at most this many positives per image (T8); ``None`` keeps all.
        generator: RNG for the type draw and the subsampling (reproducible runs).

    Returns:
        :class:`InstanceQueries` with ``gt_idx`` filled, grouped by image (ascending
        ``batch_idx``), in random order within an image when ``num_samples`` is set; and
        the :class:`SamplingInfo` of the call (flat indices, box types, counts).
    """
    device = anchors.device
    batch, num = anchor_gt.shape
    offsets = level_offsets(feature_sizes, num_anchors)
    if anchors.shape[0] != num or offsets[-1] != num or pred_boxes.shape[:2] != (batch, num):
        raise ValueError(
            f"sampling.py: sample_queries got anchors {tuple(anchors.shape)}, anchor_gt "
            f"{tuple(anchor_gt.shape)}, pred_boxes {tuple(pred_boxes.shape)} and feature_sizes "
            f"{list(feature_sizes)} x A={num_anchors} = {offsets[-1]} rows; pass anchors of all "
            f"levels concatenated, (B, N) anchor_gt and (B, N, 4) pred_boxes for the same N."
        )
    if num_samples is not None and num_samples < 0:
        raise ValueError(f"sampling.py: num_samples must be >= 0 or None, got {num_samples}.")
    pred_boxes = pred_boxes.detach()  # Iz must not back-propagate into the regression

    # ---- candidates: every (image, anchor) whose anchor condition holds
    cand_b, cand_n = (anchor_gt >= 0).nonzero(as_tuple=True)  # (M,), (M,) sorted by image
    cand_g = anchor_gt[cand_b, cand_n]  # (M,) GT within image
    num_cand = cand_b.shape[0]
    gt_box = gt_boxes[cand_b, cand_g].to(anchors.dtype)  # (M, 4)

    # ---- target box per candidate, drawn from {anchor, GT, regressed}
    box_type = draw_box_types(num_cand, target_box_probs, generator, device)  # (M,)
    choices = torch.stack(
        [anchors[cand_n], gt_box, pred_boxes[cand_b, cand_n].to(anchors.dtype)], dim=1
    )  # (M, 3, 4)
    target = choices[torch.arange(num_cand, device=device), box_type]  # (M, 4)
    positive = paired_box_iou(target, gt_box) > box_iou_thresh  # (M,)
    if gt_valid.shape[1] > 0:  # padded GTs cannot be referenced by a sane anchor_gt
        positive &= gt_valid[cand_b, cand_g]

    # ---- keep at most num_samples positives per image, uniformly at random
    pos = positive.nonzero(as_tuple=True)[0]  # (P,) candidate rows, sorted by image
    pos_b = cand_b[pos]  # (P,)
    if num_samples is not None:
        # random order, then a stable sort by image keeps that order within each image
        perm = _randperm(pos.shape[0], generator, device)  # (P,)
        perm = perm[torch.sort(pos_b[perm], stable=True).indices]  # (P,) grouped by image
        pos, pos_b = pos[perm], pos_b[perm]
        counts = count_per_index(pos_b, batch)  # (B,)
        first = torch.cumsum(counts, 0) - counts  # (B,) first row of every image
        rank = torch.arange(pos.shape[0], device=device) - first[pos_b]  # (P,) rank in image
        keep = rank < num_samples  # (P,)
        pos, pos_b = pos[keep], pos_b[keep]

    flat_idx = cand_n[pos]  # (Q,)
    level, y, x, a = decode_anchor_index(flat_idx, level_ids, feature_sizes, num_anchors)
    stride_table = to_device([float(s) for s in strides], device, anchors.dtype)  # (L,)
    queries = InstanceQueries(
        batch_idx=pos_b,
        level=level,
        yx=torch.stack([y, x], dim=1),  # (Q, 2) (row, col)
        stride=stride_table[level],  # (Q,)
        anchors=anchors[flat_idx],  # (Q, 4)
        target_boxes=target[pos],  # (Q, 4)
        gt_idx=cand_g[pos],  # (Q,)
    )
    info = SamplingInfo(
        flat_idx=flat_idx,
        anchor_idx=a,
        box_type=box_type[pos],
        candidate_box_type=box_type,
        num_candidates=count_per_index(cand_b, batch),
        num_positives=count_per_index(cand_b, batch, where=positive),
    )
    return queries, info


def mask_targets(
    gt_masks: Sequence[Tensor],
    queries: InstanceQueries,
    size: int,
    sampling_ratio: int = 2,
) -> Tensor:
    """GT masks cropped to the queries' target boxes, resized to ``size x size``, binarised.

    One ``torchvision.ops.roi_align`` call per image, on the GT masks its queries
    reference, at the image's own size (as torchvision's Mask R-CNN crops its targets):
    ``aligned=True`` (pixel ``(i, j)`` covers ``[j, j+1] x [i, i+1]``, the box convention
    of the package) and ``sampling_ratio`` bilinear samples per bin side (2 by default: a
    fixed 2x2 samples per output pixel, cheap and deterministic; ``0`` = adaptive,
    averaging more samples for big boxes, as detectron2's ``BitMasks.crop_and_resize`` and
    torchvision's Mask R-CNN crop theirs: on a large box a thin part may then fall between
    the fixed samples of its bin). The result is thresholded at 0.5.

    Only one image's referenced masks are ever float at a time, at its own size: a
    target does not depend on the other images of the batch, and the transient is
    ``max_i U_i h_i w_i`` floats rather than ``U H_max W_max`` (all referenced masks
    padded to the batch's largest image), which would be the largest transient of a
    PointINS training step. The host reads the device twice per batch, whatever its
    size: the ``unique`` of the referenced GTs, and the per-image counts of rows and GTs.

    Args:
        gt_masks: one ``(G_i, h_i, w_i)`` uint8/bool tensor per image, in input pixels.
        queries: with ``batch_idx``, ``gt_idx`` and ``target_boxes`` ``(N, 4)``.
        size: output side, ``2K``.

    Returns:
        ``(N, size, size)`` float in ``{0, 1}``.
    """
    if queries.gt_idx is None:
        raise ValueError("sampling.py: mask_targets needs queries.gt_idx; use sample_queries.")
    boxes = queries.target_boxes
    dtype = boxes.dtype if boxes.dtype.is_floating_point else torch.float32
    targets = boxes.new_zeros((boxes.shape[0], size, size), dtype=dtype)  # (N, size, size)
    if boxes.shape[0] == 0:
        return targets
    device, num_images = boxes.device, len(gt_masks)
    # every referenced GT once, as a global id (first GT of its image + index within it)
    counts = [int(m.shape[0]) for m in gt_masks]
    first_gt = [sum(counts[:i]) for i in range(num_images)]
    image_first_gt = to_device(first_gt, device)  # (B,)
    global_id = image_first_gt[queries.batch_idx] + queries.gt_idx  # (N,)
    used, inverse = torch.unique(global_id, return_inverse=True)  # (U,) sorted, (N,)
    used_image = torch.bucketize(used, image_first_gt, right=True) - 1  # (U,)
    # rows and referenced GTs grouped by image; their counts in one read (one sync)
    order = torch.argsort(queries.batch_idx, stable=True)  # (N,)
    sizes = torch.cat(
        [count_per_index(queries.batch_idx, num_images), count_per_index(used_image, num_images)]
    ).tolist()
    row_groups = order.split(sizes[:num_images])
    used_groups = used.split(sizes[num_images:])
    first_used = 0  # position of the image's first referenced GT in `used`
    for image, (masks, rows, used_here) in enumerate(
        zip(gt_masks, row_groups, used_groups, strict=True)
    ):  # a loop over images, vectorised within each
        if rows.numel() > 0:
            crops = roi_align(
                masks.to(device)[used_here - first_gt[image]].to(dtype)[:, None],  # (U_i, 1, h, w)
                torch.cat(
                    [(inverse[rows] - first_used)[:, None].to(dtype), boxes[rows].to(dtype)], 1
                ),  # (N_i, 5)
                (size, size),
                spatial_scale=1.0,
                sampling_ratio=sampling_ratio,
                aligned=True,
            )  # (N_i, 1, size, size)
            targets[rows] = (crops[:, 0] >= 0.5).to(dtype)
        first_used += used_here.shape[0]
    return targets  # (N, size, size)
