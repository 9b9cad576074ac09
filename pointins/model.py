"""PointINS as a plain ``nn.Module``: backbone → FPN → dense detector → mask module.

Training and inference meet the mask module through the same seam,
:class:`~pointins.structures.InstanceQueries`: sampled (point, anchor, target box)
candidates in training, the detections kept after NMS at inference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from pointins.detectors.dense_detector import DenseDetector
from pointins.mask.instance_aware_mask import InstanceAwareMask
from pointins.mask.losses import mask_loss
from pointins.mask.paste import paste_masks
from pointins.mask.sampling import QuerySampler
from pointins.mask.scoring import maskness
from pointins.structures import Detections, DetectorState, InstanceQueries


class PointINS(nn.Module):
    """The network. ``mask=None`` gives the plain detector.

    ``mask_weight`` is λ_mask (§3.4), ``edge_weight`` the weight of target edges in the
    mask BCE, ``dice_weight`` that of an added Dice term (0 in the paper), and
    ``maskness`` rescores every detection by its mask's confidence at inference
    (:func:`~pointins.mask.scoring.maskness`; off in the paper), and a pasted pixel is
    foreground where its mask probability is at least ``mask_thresh``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        detector: DenseDetector,
        mask: InstanceAwareMask | None = None,
        sampler: QuerySampler | None = None,
        det_weight: float = 1.0,
        mask_weight: float = 2.0,
        edge_weight: float = 4.0,
        dice_weight: float = 0.0,
        maskness: bool = False,
        mask_thresh: float = 0.5,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.detector = detector
        self.mask = mask
        self.sampler = sampler or QuerySampler()
        self.det_weight = det_weight
        self.mask_weight = mask_weight
        self.edge_weight = edge_weight
        self.dice_weight = dice_weight
        self.maskness = maskness
        self.mask_thresh = mask_thresh
        self.to(memory_format=torch.channels_last)

    def compile_network(self, **options) -> None:
        """``torch.compile`` the convolutional network in place (``model.compile=true``):
        backbone, FPN, detector head and mask head, with dynamic shapes (image sizes vary
        per batch, instance counts per image). Targets, sampling, NMS and paste stay eager:
        they are data-dependent and cheap. Parameter names, and so checkpoints, do not change.
        """
        parts = [self.backbone, self.neck, self.detector.head]
        if self.mask is not None:
            parts.append(self.mask.head)
        for module in parts:
            module.compile(**{"dynamic": True, **options})

    def features(self, images: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> FPN levels [(B, F, H/s, W/s)] for s in the detector's strides.

        Convolutions run channels-last (NHWC), faster with oneDNN on CPU and with tensor
        cores on GPU; the module's weights are converted once in ``__init__``.
        """
        images = images.contiguous(memory_format=torch.channels_last)
        return self.neck(self.backbone(images))

    # ------------------------------------------------------------------ training
    def losses(
        self,
        images: Tensor,
        targets: list[dict[str, Tensor]],
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Weighted loss terms; their sum is the training loss (paper §3.4):
        detector -> query sampler -> mask module -> mask loss."""
        det_losses, state = self.detector.forward_train(self.features(images), targets)
        losses = {k: self.det_weight * v for k, v in det_losses.items()}
        if self.mask is None:
            return losses
        losses["loss_mask"] = self.weighted_mask_loss(*self.mask_logits(state, targets, generator))
        return losses

    def mask_logits(
        self,
        state: DetectorState,
        targets: list[dict[str, Tensor]],
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The mask module on its training queries (§3.3) drawn from the detector's training
        state: the logits ``(Q, S, S)`` and their targets ``(Q, S, S)``, ``S = mask_size``."""
        anchor_gt = self.detector.mask_anchor_condition(state, self.sampler.anchor_iou)  # (B, N)
        # targets first: their crop's transient memory then comes before the head's activations
        queries, mask_gt = self.sampler(
            state, anchor_gt, [t["masks"] for t in targets], self.mask.mask_size, generator
        )  # Q queries, (Q, S, S)
        return self.mask(state.poi_features, queries), mask_gt  # (Q, S, S), (Q, S, S)

    def weighted_mask_loss(self, logits: Tensor, mask_gt: Tensor) -> Tensor:
        """The weighted mask loss λ_mask · L_mask of :meth:`mask_logits`' output."""
        return self.mask_weight * mask_loss(logits, mask_gt, self.edge_weight, self.dice_weight)

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def detect(self, images: Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        """Detections (and, with a mask module, ``S×S`` box-relative mask probabilities)
        per image, in input-image coordinates, by decreasing score."""
        outputs = self.detector(self.features(images))
        detections = self.detector.inference(outputs, image_sizes)
        if self.mask is None:
            return detections
        queries = queries_from_detections(detections, self.detector.strides)
        probs = self.mask(outputs.poi_features, queries).sigmoid()  # (N, S, S)
        if len(detections) == 1:  # one image: no split (an exported graph's path, where a
            detections[0].masks = probs  # split would fix the traced image's count)
        else:
            for det, p in zip(detections, probs.split([len(d) for d in detections]), strict=True):
                det.masks = p
        if self.maskness:
            detections = [rescore(det, maskness(det.masks, self.mask_thresh)) for det in detections]
        return detections

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        orig_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Per image ``boxes`` (n, 4), ``scores``, ``labels`` and ``masks`` (n, H0, W0) bool,
        all at the ORIGINAL image resolution."""
        results = []
        for det, (h, w), (h0, w0) in zip(
            self.detect(images, image_sizes), image_sizes, orig_sizes, strict=True
        ):
            scale = det.boxes.new_tensor([w0 / w, h0 / h, w0 / w, h0 / h])
            boxes = det.boxes * scale  # (n, 4) original pixels
            out = {"boxes": boxes, "scores": det.scores, "labels": det.labels}
            if det.masks is not None:
                out["masks"] = paste_masks(det.masks, boxes, (h0, w0), self.mask_thresh)
            results.append(out)
        return results


def rescore(det: Detections, factor: Tensor) -> Detections:
    """``det`` with its scores multiplied by ``factor`` ``(n,)``, re-sorted by score."""
    det.scores = det.scores * factor
    if torch.jit.is_tracing():  # ONNX has no stable sort; ties are left in either order
        return det[det.scores.topk(det.scores.shape[0]).indices]
    return det[det.scores.argsort(descending=True, stable=True)]


def queries_from_detections(
    detections: Sequence[Detections], strides: Sequence[int]
) -> InstanceQueries:
    """One query per kept detection: its own level, location, anchor and regressed box."""
    device = detections[0].boxes.device
    batch_idx = torch.cat([torch.full_like(d.labels, i) for i, d in enumerate(detections)])
    level = torch.cat([d.level for d in detections])  # (N,)
    stride = torch.as_tensor(strides, dtype=torch.float32, device=device)[level]  # (N,)
    return InstanceQueries(
        batch_idx=batch_idx,
        level=level,
        yx=torch.cat([d.yx for d in detections]),
        stride=stride,
        anchors=torch.cat([d.anchors for d in detections]),
        target_boxes=torch.cat([d.boxes for d in detections]),
    )


def p6_input(neck: Mapping, detector: Mapping) -> str:
    """The FPN's P6 input: ``neck.p6_from`` if set, else the detector's own
    (``detector.p6_from``: RetinaNet C5, FCOS and ATSS P5, as in the original detectors)."""
    return neck.get("p6_from") or detector.get("p6_from", "p5")


#: the parts of a ``conf/detector`` group, each a ``_target_``
DETECTOR_PARTS = ("head", "anchor_generator", "box_coder", "assigner", "loss", "postprocess")


def build_detector(
    detector: Mapping, in_channels: int, num_classes: int, strides: Sequence[int]
) -> DenseDetector:
    """Instantiate a ``conf/detector`` group part by part, giving each part what it derives
    from the FPN: the anchor generator its strides, the head its input width, the classes
    and the anchors per location."""
    missing = [k for k in DETECTOR_PARTS if k not in detector]
    if missing:
        raise ValueError(
            f"model.detector lacks {missing}: a detector config names its parts "
            f"{list(DETECTOR_PARTS)}, each with a _target_ (see conf/detector/fcos.yaml). A "
            "checkpoint whose hyper-parameters hold a flat detector config (num_convs, "
            "score_thresh, ... at the top level) cannot be rebuilt by this version."
        )
    anchor_generator = instantiate(detector["anchor_generator"], strides=list(strides))
    head = instantiate(
        detector["head"],
        in_channels=in_channels,
        num_classes=num_classes,
        num_anchors=anchor_generator.num_anchors,
        num_levels=len(strides),
    )
    # p6_from is the FPN's (p6_input), not a part of the detector
    parts = {k: v for k, v in detector.items() if k not in ("head", "anchor_generator", "p6_from")}
    return instantiate(parts, head=head, anchor_generator=anchor_generator, _convert_="all")


#: ``model.mask`` keys the network itself keeps -> :class:`PointINS` arguments
MASK_OPTIONS = {
    "loss_weight": "mask_weight",
    "edge_weight": "edge_weight",
    "dice_weight": "dice_weight",
    "maskness": "maskness",
    "mask_thresh": "mask_thresh",
}


def build_model(
    backbone: Mapping,
    neck: Mapping,
    detector: Mapping,
    mask: Mapping | None,
    num_classes: int,
    det_weight: float = 1.0,
) -> PointINS:
    """Instantiate backbone → FPN → detector → mask module from their config groups, wiring
    the widths and strides each part derives from the previous one (nothing is typed twice
    in the configs).

    ``mask`` holds :class:`InstanceAwareMask`'s arguments plus the keys the network itself
    keeps: ``sampling`` (the :class:`QuerySampler`'s), ``loss_weight`` (λ_mask),
    ``edge_weight``, ``dice_weight``, ``maskness`` and ``mask_thresh``. The mappings are not
    modified.
    """
    backbone_m = instantiate(backbone)
    neck_m = instantiate(
        neck,
        in_channels=backbone_m.out_channels,
        in_strides=backbone_m.strides,
        p6_from=p6_input(neck, detector),
    )
    detector_m = build_detector(detector, neck_m.out_channels, num_classes, neck_m.strides)
    if mask is None:
        return PointINS(backbone_m, neck_m, detector_m, det_weight=det_weight)
    network_keys = ("sampling", *MASK_OPTIONS)
    mask_m = instantiate(
        {k: v for k, v in mask.items() if k not in network_keys},
        in_channels=detector_m.head.out_channels,
        anchor_shape=detector_m.anchor_shape,
    )
    options = {name: mask[key] for key, name in MASK_OPTIONS.items() if key in mask}
    return PointINS(
        backbone_m,
        neck_m,
        detector_m,
        mask_m,
        QuerySampler(**mask.get("sampling", {})),
        det_weight,
        **options,
    )
