"""torchvision's FCOS, RetinaNet and Mask R-CNN on the recipe's backbone, FPN and data,
behind PointINS's interface (:class:`TorchvisionDetector`), trained and scored by the same
LightningModule code as PointINS
(:class:`~pointins.engine.baseline_module.TorchvisionModule`).

    python train.py experiment=shapes baseline=maskrcnn trainer.max_time=00:00:15:48
    python train.py experiment=shapes baseline=fcos trainer.max_time=00:00:15:48

``baseline=<fcos|retinanet|maskrcnn>`` (``conf/baseline/``) makes ``model._target_``
:class:`~pointins.engine.baseline_module.TorchvisionModule`, a
:class:`~pointins.engine.lit_module.DetectionModule` like
:class:`~pointins.engine.lit_module.PointINSModule`: the same ``Trainer``, datamodule, precision,
gradient clipping, optimiser, learning-rate schedule, evaluator, logged metric names and
checkpoints. Choices where torchvision and our recipe differ (each keeps torchvision's
model and changes only what the comparison needs to be equal):

* Resizing and normalisation belong to our datamodule, so the models' internal
  ``GeneralizedRCNNTransform`` becomes :class:`IdentityTransform`: it only pads the
  images, which torchvision takes as a list, into a batch again (to a multiple of 32,
  torchvision's default and the recipe's ``data.size_divisibility``), and returns
  detections in input coordinates.
  :func:`rescale_predictions` maps them to the original image, as torchvision's own
  ``postprocess`` does: boxes scaled, Mask R-CNN's 28×28 masks pasted at the original
  resolution with torchvision's ``paste_masks_in_image`` and thresholded at 0.5.
  torchvision takes each level's stride as the padded size // the level's size, so, as in
  torchvision itself, levels coarser than the padding (P6, P7 at a multiple of 32 that is
  not one of 64 or 128) place their anchors on a slightly longer stride than the nominal
  one; its anchors are centred at ``(x·s, y·s)`` with rounded corners, where PointINS's
  are at ``((x + 0.5)·s, (y + 0.5)·s)`` (the official FCOS locations).
* Backbone body: our ``TimmBackbone`` from ``model.backbone``, FPN ``model.neck.out_channels``
  wide (the recipe's width; torchvision's is 256).
* FCOS and RetinaNet: the recipe's ``FPN`` (torchvision's ``FeaturePyramidNetwork`` with
  ``LastLevelP6P7``: P3–P7, strides 8..128), P6 from the input the detector's recipe takes
  (FCOS: P5, as ``fcos_resnet50_fpn``; RetinaNet: C5, as ``retinanet_resnet50_fpn_v2``).
* FCOS: one anchor per location, sized to its stride; towers of the recipe's
  ``num_convs`` convs (torchvision's ``FCOSHead`` takes it), classification prior
  ``prior_prob``.
* RetinaNet: 9 anchors 4·s·2^{0,1/3,2/3} × ratios (0.5, 1, 2) per level (paper §3.1); the
  towers, fixed at 4 convs in torchvision, are cut to ``num_convs`` (slicing their
  ``nn.Sequential``); when the recipe's ``group_norm`` is set, GroupNorm(32) in the towers
  and the GIoU box loss (torchvision's ``retinanet_resnet50_fpn_v2`` head), else plain
  towers and the L1 box loss (``retinanet_resnet50_fpn``).
* Mask R-CNN: torchvision's ``maskrcnn_resnet50_fpn`` layout on the body's C2–C5:
  ``FeaturePyramidNetwork`` P2–P5 with ``LastLevelMaxPool`` (P6 = max-pooled P5, for the
  RPN only), RPN anchors 32..512 × (0.5, 1, 2) on P2–P6, RoIAlign (box 7×7, mask 14×14,
  sampling ratio 2) over P2–P5 with torchvision's level mapper (canonical level 4 at
  224 px), the box head ``TwoMLPHead(F·7·7, 1024)``; each of these is torchvision's default,
  built by ``MaskRCNN`` itself. The mask head's four convs and its deconv are the FPN width
  (torchvision's 256 is its FPN width).
  It reserves label 0 for background: ``num_classes = C + 1``, target labels + 1 and
  predicted labels - 1. FCOS and RetinaNet do not (``num_classes = C``).
* Inference: the recipe's ``score_thresh``, ``detections_per_img`` and (FCOS, RetinaNet)
  ``topk_candidates`` and ``nms_thresh``; Mask R-CNN keeps torchvision's box NMS (0.5).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor, nn
from torchvision.models.detection import FCOS, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from pointins.model import p6_input

BASELINES = ("fcos", "retinanet", "maskrcnn")
# torchvision's FCOS and RetinaNet score C sigmoid classes; Mask R-CNN's softmax has a
# background class 0 in front of them.
RESERVES_BACKGROUND = {"fcos": False, "retinanet": False, "maskrcnn": True}
SIZE_DIVISIBLE = 32
MASK_THRESHOLD = 0.5
MASKRCNN_NMS = 0.5  # torchvision's box_nms_thresh
MASKRCNN_BOX_HEAD_DIM = 1024  # the representation_size of torchvision's default TwoMLPHead
RCNN_OUT_INDICES = (1, 2, 3, 4)  # timm feature indices of C2..C5 (ResNet / ResNeXt)


# ---------------------------------------------------------------------------- model
class PyramidBackbone(nn.Module):
    """Our ``TimmBackbone`` → ``FPN`` as torchvision's detectors want a backbone:
    ``out_channels`` and ``forward(images) -> OrderedDict(p3=..., ..., p7=...)``."""

    def __init__(self, body: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.neck = neck
        self.out_channels: int = neck.out_channels
        self.strides: list[int] = list(neck.strides)
        self.names = [f"p{int(math.log2(s))}" for s in self.strides]  # p3..p7

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """(B, 3, H, W) -> {p3: (B, F, H/8, W/8), ..., p7: (B, F, H/128, W/128)}."""
        levels = self.neck(self.body(images))
        return OrderedDict(zip(self.names, levels, strict=True))


class IdentityTransform(GeneralizedRCNNTransform):
    """torchvision's model-side transform reduced to batching.

    Our datamodule has already resized and normalised the images, so nothing is
    normalised or resized here; the images are only padded into one tensor. Detections
    come back in input coordinates (see :func:`rescale_predictions`), with Mask R-CNN's
    masks left as its (n, 1, 28, 28) RoI probabilities.
    """

    def __init__(self, size_divisible: int = SIZE_DIVISIBLE) -> None:
        super().__init__(
            min_size=1,
            max_size=1,
            image_mean=[0.0, 0.0, 0.0],
            image_std=[1.0, 1.0, 1.0],
            size_divisible=size_divisible,
        )

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError(f"IdentityTransform: expected a float image, got {image.dtype}")
        return image

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        return result


def build_pyramid(backbone: Mapping, neck: Mapping, detector: Mapping) -> PyramidBackbone:
    """The recipe's backbone and FPN (P6 from the input the detector's recipe takes)."""
    body = instantiate(backbone)
    fpn = instantiate(
        neck,
        in_channels=body.out_channels,
        in_strides=body.strides,
        p6_from=p6_input(neck, detector),
    )
    return PyramidBackbone(body, fpn)


class RCNNPyramid(nn.Module):
    """torchvision's ``BackboneWithFPN`` on our ``TimmBackbone``: C2–C5 → P2–P5 and the
    max-pooled P6, named as torchvision's two-stage detectors read them."""

    def __init__(self, body: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            list(body.out_channels), out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """(B, 3, H, W) -> {'0': P2 (B, F, H/4, W/4), ..., '3': P5 (.., H/32, ..),
        'pool': P6 (.., H/64, ..)}."""
        features = self.body(images)  # [C2, C3, C4, C5]
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def build_rcnn_pyramid(backbone: Mapping, neck: Mapping) -> RCNNPyramid:
    """The recipe's backbone body read at C2–C5 (strides 4..32) and an FPN as wide as the
    recipe's."""
    body = instantiate(backbone, out_indices=RCNN_OUT_INDICES)
    if list(body.strides) != [4, 8, 16, 32]:
        raise ValueError(
            f"baseline=maskrcnn needs C2–C5 at strides 4, 8, 16, 32; model.backbone "
            f"{backbone.get('name')!r} gives strides {body.strides} at timm out_indices "
            f"{list(RCNN_OUT_INDICES)}"
        )
    return RCNNPyramid(body, int(neck["out_channels"]))


def _set_prior(cls_logits: nn.Conv2d, prior_prob: float) -> None:
    """Classification bias so that every class starts at probability ``prior_prob``."""
    nn.init.constant_(cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))


def dense_inference_options(detector: Mapping) -> dict[str, Any]:
    """The recipe's ``model.detector.postprocess`` options, as torchvision's FCOS and
    RetinaNet name them."""
    keys = ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates")
    return {key: detector["postprocess"][key] for key in keys}


def build_fcos(pyramid: PyramidBackbone, detector: Mapping, num_classes: int) -> FCOS:
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in pyramid.strides),  # one point per location, size = stride
        aspect_ratios=((1.0,),) * len(pyramid.strides),
    )
    num_convs = int(detector["head"]["num_convs"])
    head = FCOSHead(pyramid.out_channels, 1, num_classes, num_convs=num_convs)
    _set_prior(head.classification_head.cls_logits, detector["head"]["prior_prob"])
    return FCOS(
        pyramid,
        num_classes,
        anchor_generator=anchors,
        head=head,
        **dense_inference_options(detector),
    )


def build_retinanet(pyramid: PyramidBackbone, detector: Mapping, num_classes: int) -> RetinaNet:
    anchors = AnchorGenerator(
        sizes=tuple(tuple(4 * s * 2 ** (i / 3) for i in range(3)) for s in pyramid.strides),
        aspect_ratios=((0.5, 1.0, 2.0),) * len(pyramid.strides),
    )
    # GroupNorm(32) in the towers when the recipe's detector has it: torchvision's v2 head,
    # which retinanet_resnet50_fpn_v2 trains with the GIoU box loss
    v2 = bool(detector["head"]["group_norm"])
    norm = partial(nn.GroupNorm, 32) if v2 else None
    head = RetinaNetHead(
        pyramid.out_channels, anchors.num_anchors_per_location()[0], num_classes, norm
    )
    if v2:
        head.regression_head._loss_type = "giou"
    _set_prior(head.classification_head.cls_logits, detector["head"]["prior_prob"])
    num_convs = int(detector["head"]["num_convs"])
    head.classification_head.conv = head.classification_head.conv[:num_convs]
    head.regression_head.conv = head.regression_head.conv[:num_convs]
    return RetinaNet(
        pyramid,
        num_classes,
        anchor_generator=anchors,
        head=head,
        **dense_inference_options(detector),
    )


def build_maskrcnn(rcnn: RCNNPyramid, detector: Mapping, num_classes: int) -> MaskRCNN:
    """``num_classes`` foreground classes; the model itself has ``num_classes + 1``.

    The RPN's anchor generator, both RoI poolers and the box head are left to ``MaskRCNN``,
    which builds torchvision's defaults for a ``{'0': P2, ..., '3': P5, 'pool': P6}``
    backbone; the mask head is sized to the FPN width. torchvision takes ``num_classes``
    only when it builds every predictor, so both predictors are given here, as it builds them.
    """
    width = rcnn.out_channels
    return MaskRCNN(
        rcnn,
        None,  # given by the predictors
        box_predictor=FastRCNNPredictor(MASKRCNN_BOX_HEAD_DIM, num_classes + 1),
        box_score_thresh=detector["postprocess"]["score_thresh"],
        box_nms_thresh=MASKRCNN_NMS,
        box_detections_per_img=detector["postprocess"]["detections_per_img"],
        mask_head=MaskRCNNHeads(width, (width,) * 4, dilation=1),
        mask_predictor=MaskRCNNPredictor(width, width, num_classes + 1),
    )


_DENSE_BUILDERS = {"fcos": build_fcos, "retinanet": build_retinanet}


def build_torchvision(
    name: str, backbone: Mapping, neck: Mapping, detector: Mapping, num_classes: int
) -> nn.Module:
    """torchvision's ``name`` detector for ``num_classes`` dataset classes, on the recipe's
    backbone and FPN, with the resizing transform replaced by :class:`IdentityTransform`."""
    if name not in BASELINES:
        raise ValueError(f"baseline={name!r}: choose one of {', '.join(BASELINES)}")
    if name == "maskrcnn":
        model = build_maskrcnn(build_rcnn_pyramid(backbone, neck), detector, num_classes)
    else:
        pyramid = build_pyramid(backbone, neck, detector)
        model = _DENSE_BUILDERS[name](pyramid, detector, num_classes)
    model.transform = IdentityTransform()
    return model


# ----------------------------------------------------------------- data adaptation
def unpad(images: Tensor, image_sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """The un-padded (3, h, w) images of a padded (B, 3, H, W) batch."""
    return [img[:, :h, :w] for img, (h, w) in zip(images, image_sizes, strict=True)]


def convert_targets(
    targets: Sequence[Mapping[str, Tensor]], shift_labels: bool, with_masks: bool = False
) -> list[dict[str, Tensor]]:
    """Per image ``boxes`` (n, 4) xyxy in input pixels, ``labels`` (+1 when the model
    reserves 0 for background) and, ``with_masks``, ``masks`` (n, h, w) uint8."""
    out = []
    for t in targets:
        target = {"boxes": t["boxes"].float(), "labels": t["labels"] + int(shift_labels)}
        if with_masks:
            target["masks"] = t["masks"].to(torch.uint8)
        out.append(target)
    return out


def rescale_predictions(
    predictions: Sequence[Mapping[str, Tensor]],
    image_sizes: Sequence[tuple[int, int]],
    orig_sizes: Sequence[tuple[int, int]],
    shift_labels: bool,
) -> list[dict[str, Tensor]]:
    """torchvision detections in input coordinates -> the evaluator's format: ``boxes``
    in original-image pixels, labels ``0..C-1`` and, where the model gives (n, 1, M, M)
    RoI masks, ``masks`` (n, H0, W0) bool pasted at their boxes in the original image."""
    results = []
    for pred, (h, w), (h0, w0) in zip(predictions, image_sizes, orig_sizes, strict=True):
        scale = pred["boxes"].new_tensor([w0 / w, h0 / h, w0 / w, h0 / h])
        boxes = pred["boxes"] * scale  # (n, 4) original pixels
        labels = pred["labels"] - int(shift_labels)
        out = {"boxes": boxes, "scores": pred["scores"], "labels": labels}
        if "masks" in pred:
            probs = paste_masks_in_image(pred["masks"], boxes, (h0, w0))  # (n, 1, H0, W0)
            out["masks"] = probs[:, 0] > MASK_THRESHOLD  # (n, H0, W0)
        results.append(out)
    return results


def _fp32(x: Tensor) -> Tensor:
    return x.float() if x.is_floating_point() else x


class TorchvisionDetector(nn.Module):
    """A torchvision detector behind PointINS's interface: padded image batches and our
    targets in, :meth:`losses` and :meth:`predict` (detections in original-image pixels,
    labels ``0..C-1``) out.

    Args:
        name: one of :data:`BASELINES`.
        net: the detector of :func:`build_torchvision`.
    """

    def __init__(self, name: str, net: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.net = net
        self.shift_labels = RESERVES_BACKGROUND[name]
        self.with_masks = name == "maskrcnn"

    @property
    def backbone(self) -> nn.Module:
        """The timm backbone (its ``norm`` is what the checkpoint records)."""
        return self.net.backbone.body

    def losses(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        targets: Sequence[Mapping[str, Tensor]],
    ) -> dict[str, Tensor]:
        """torchvision's losses (fp32) of a padded (B, 3, H, W) batch; training mode only."""
        if not self.training:
            raise RuntimeError(
                f"torchvision {self.name}: losses need training mode (call .train() first)"
            )
        converted = convert_targets(targets, self.shift_labels, self.with_masks)
        losses = self.net(unpad(images, image_sizes), converted)
        return {k: v.float() for k, v in losses.items()}

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        orig_sizes: Sequence[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections of a padded (B, 3, H, W) batch: per image ``boxes`` (n, 4) xyxy in
        ``orig_sizes`` pixels, ``scores``, ``labels`` and (Mask R-CNN) ``masks`` (n, H0, W0)
        bool. Runs the network in eval mode and restores the mode it found."""
        was_training = self.net.training
        self.net.eval()
        try:
            outputs = self.net(unpad(images, image_sizes))
        finally:
            self.net.train(was_training)
        outputs = [{k: _fp32(v) for k, v in o.items()} for o in outputs]
        # box scaling and mask pasting in fp32, outside any autocast region
        with torch.autocast(images.device.type, enabled=False):
            return rescale_predictions(outputs, image_sizes, orig_sizes, self.shift_labels)
