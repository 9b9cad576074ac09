"""Our RetinaNet and FCOS against torchvision's, with the same weights.

Our detector (``build_model``: timm backbone, FPN, ``DenseDetector``) is built from the
configs, and its weights are copied into torchvision's ``RetinaNet`` / ``FCOS`` as
:func:`pointins.baselines.build_torchvision` builds them (the same backbone and FPN
classes, torchvision's ``RetinaNetHead`` / ``FCOSHead``, :class:`IdentityTransform`). Both
run on the same padded images and targets.

Asserted equal:

* the copy is complete: every torchvision parameter comes from ours (strict
  ``load_state_dict``), tower layers in the same order, GroupNorm groups equal;
* anchors, FPN levels and head outputs (logits, box regression, centre-ness, the latter on
  the regression tower in both);
* detections after post-processing (boxes, scores, labels) in eval mode;
* the training assignment (``matched_idxs``: IoU matching with ignored anchors and
  low-quality matches for RetinaNet; FCOS centre sampling radius 1.5, size ranges
  0/64/128/256/512/inf, smallest box first);
* the loss terms where the algorithms are the same, and the exact relation where they
  differ on purpose.

Differences on purpose, each asserted or neutralised where it arises:

* Anchors: torchvision's ``AnchorGenerator`` centres a location's anchors on ``(x*s, y*s)``,
  rounds the cell corners to integers and orders them ratio-major; ours centre on
  ``((x+0.5)*s, (y+0.5)*s)`` (the official FCOS locations, ``x*s + s//2``) without rounding,
  scale-major (:func:`test_torchvision_anchors_are_ours_shifted_rounded_reordered`). The
  comparisons give torchvision our cell anchors shifted by ``s/2``.
* torchvision takes a level's stride as padded size // feature size, the nominal stride
  only where the padded size is a multiple of 128 (P7's stride); the batch here is.
* FCOS's learnable per-level ``Scale`` has no torchvision counterpart (one regression conv
  for all levels): it stays at its initial 1.
* GroupNorm towers: torchvision's RetinaNet v2 head has no conv bias before its GroupNorms,
  ours has one (mapped only when zero); ours takes fewer than 32 groups below 64 channels.
* Post-processing: ours drops boxes that clipping to the image left empty, torchvision keeps
  them (the padding below the smaller image gives some); torchvision's detections without
  them are the start of ours.
* FCOS scores: ours keeps the pairs with ``sigmoid(cls) > score_thresh``, ranks them by
  ``sigmoid(cls) * sigmoid(ctr)`` and reports its square root (official FCOS/ATSS code);
  torchvision thresholds the square root. At ``score_thresh=0`` both keep every pair and the
  detections agree; above it the candidate sets differ in general.
* FCOS size ranges: ours include both ends (official FCOS), torchvision's neither; no
  location of the test lies on an end.
* IoU matching: ours makes no low-quality match for a GT that overlaps no anchor (best IoU
  0), torchvision matches it; every GT here overlaps anchors.
* RetinaNet loss normalisation: torchvision divides each image's sums by that image's
  positives and averages over the images; ours divides the batch's sums by the batch's
  positives. Per image they agree; over the batch, ours is torchvision's per-image losses
  weighted by their positives.
* RetinaNet box loss: torchvision's is L1 on the deltas (``_loss_type = "l1"``); ours is
  smooth-L1 with ``model.detector.loss.smooth_l1_beta`` (default 0.1, detectron2's), L1 at
  the ``beta=0`` compared here.
* FCOS box loss: ours weights each positive's GIoU loss by its centre-ness target and
  divides by their sum (official FCOS, AdelaiDet); torchvision averages it over the
  positives. Classification (focal) and centre-ness BCE, both over the batch's positives,
  agree.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou, generalized_box_iou_loss

from pointins.baselines import (
    IdentityTransform,
    build_fcos,
    build_retinanet,
    build_torchvision,
    unpad,
)
from pointins.detectors.assigners import gather_assigned, pad_targets
from pointins.model import PointINS, build_model
from pointins.structures import DenseOutputs, cat_levels, pad_images

NUM_CLASSES = 3
STRIDES = [8, 16, 32, 64, 128]
TINY = [
    "experiment=shapes",
    "mask=none",
    "model.backbone.pretrained=false",
    # a small timm ResNet: the body is copied as it is, its depth does not matter here
    "model.backbone.name=resnet10t",
    "model.backbone.norm=gn",  # statistics per image, not per batch
    # 64 wide: ours and torchvision's GroupNorm(32) agree from 64 channels (below, ours takes
    # fewer groups so that each has two channels)
    "model.neck.out_channels=64",
    "model.detector.head.conv_dim=64",
    "model.detector.head.num_convs=2",
    "model.detector.postprocess.topk_candidates=60",  # the per-level top-k cuts
    "model.detector.postprocess.detections_per_img=40",  # and so does the per-image limit
]
DETECTIONS_PER_IMG = 40
# each case: the detector config and what it sets in model.detector
CASES = {
    # the paper's RetinaNet head (plain towers), as torchvision's retinanet_resnet50_fpn;
    # box loss L1 (smooth-L1 at beta 0), as torchvision's
    "retinanet": (
        "retinanet",
        {"head": {"group_norm": False}, "loss": {"smooth_l1_beta": 0.0}},
    ),
    # the shapes recipe's GroupNorm towers, as torchvision's v2 head (zero tower biases)
    "retinanet-gn": ("retinanet", {"head": {"group_norm": True}}),
    # FCOS at score_thresh=0, where both post-processings keep every pair
    "fcos": ("fcos", {"postprocess": {"score_thresh": 0.0}}),
}
# a padded batch of 128 x 256, multiples of P7's stride; the second image is smaller
IMAGE_SIZES = [(128, 256), (96, 200)]
# Boxes on P3, P4 and P5 (FCOS size ranges), two FCOS boxes competing for the same P5
# locations (the smaller area wins), and small boxes whose best anchor IoU is below 0.5
# (RetinaNet's low-quality matches). Fractional coordinates: no location lies on a size-range
# boundary (ours includes both ends, as the official FCOS; torchvision neither); areas far
# apart (torchvision ranks ``1e8 - area`` in float32, in steps of 8 px²).
TARGETS = [
    {
        "boxes": torch.tensor(
            [
                [6.3, 10.7, 249.1, 121.9],
                [12.5, 14.4, 243.3, 117.6],
                [30.6, 40.2, 95.4, 118.8],
                [150.2, 60.1, 171.7, 75.3],
            ]
        ),
        "labels": torch.tensor([0, 2, 1, 2]),
    },
    {
        "boxes": torch.tensor([[5.1, 8.3, 120.6, 90.2], [100.4, 30.9, 190.7, 70.6]]),
        "labels": torch.tensor([1, 1]),
    },
]
_CONFIGS: dict[str, dict] = {}
_PAIRS: dict[str, tuple[PointINS, nn.Module]] = {}


# ------------------------------------------------------------------------------ building
def _config(compose_cfg: Callable, case: str) -> dict:
    """``model`` of ``CASES[case]``: the detector's config composed once per module, with
    the case's ``model.detector`` settings."""
    detector, settings = CASES[case]
    if detector not in _CONFIGS:
        cfg = compose_cfg([*TINY, f"detector={detector}"])
        _CONFIGS[detector] = OmegaConf.to_container(cfg.model, resolve=True)
    parts = copy.deepcopy(_CONFIGS[detector])
    for part, values in settings.items():
        assert values.keys() <= parts["detector"][part].keys()
        parts["detector"][part].update(values)
    return parts


@torch.no_grad()
def _randomise_head(model: PointINS, seed: int) -> None:
    """The head's parameters from a seeded generator: He-scaled convs, GroupNorm affine
    near 1, small biases, so that scores spread (the initial std-0.01 head ties them all).
    FCOS's per-level ``Scale`` stays 1: torchvision shares one unscaled regression conv."""
    gen = torch.Generator().manual_seed(seed)
    head = model.detector.head
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
            module.weight.mul_(math.sqrt(2.0 / fan_in))
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        elif isinstance(module, nn.GroupNorm):
            module.weight.copy_(1.0 + 0.1 * torch.randn(module.weight.shape, generator=gen))
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    head.cls_logits.weight.mul_(0.5)
    head.cls_logits.bias.sub_(1.5)  # most scores below 0.5
    head.box_regression.weight.mul_(0.2)
    if head.scales is not None:
        assert all(scale.scale.item() == 1.0 for scale in head.scales)
    if head.nonnegative_regression:
        head.box_regression.bias.add_(0.7)  # (l, t, r, b) about 0.7 stride, few ReLU zeros


@torch.no_grad()
def _zero_tower_biases(model: PointINS) -> None:
    """torchvision's GroupNorm RetinaNet towers (``retinanet_resnet50_fpn_v2``) have convs
    without bias; ours have one, which the GroupNorm that follows does not cancel (each
    group holds two channels). Only our towers with zero biases map onto torchvision's."""
    head = model.detector.head
    for conv in [*head.cls_tower, *head.reg_tower]:
        if isinstance(conv, nn.Conv2d):
            conv.bias.zero_()


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if n and not any(m.children())]


def _tower_state(ours: nn.Module, theirs: nn.Module, prefix: str) -> dict[str, Tensor]:
    """torchvision tower parameters from ours: the same layers in the same order."""
    ours_leaves = [m for _, m in _leaves(ours)]
    their_leaves = _leaves(theirs)
    assert [type(m) for m in ours_leaves] == [type(m) for _, m in their_leaves]
    state = {}
    for src, (name, dst) in zip(ours_leaves, their_leaves, strict=True):
        if isinstance(dst, nn.GroupNorm):
            assert (dst.num_groups, dst.num_channels) == (src.num_groups, src.num_channels)
        if isinstance(dst, nn.Conv2d) and dst.bias is None:
            assert not src.bias.any()  # see _zero_tower_biases
        for pname, _ in dst.named_parameters(recurse=False):
            state[f"{prefix}.{name}.{pname}"] = getattr(src, pname)
    return state


def _conv_state(src: nn.Conv2d, prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}.weight": src.weight, f"{prefix}.bias": src.bias}


def _torchvision_state(ours: PointINS, net: nn.Module) -> dict[str, Tensor]:
    """Our backbone, FPN and head as torchvision's state dict."""
    state = {f"backbone.body.{k}": v for k, v in ours.backbone.state_dict().items()}
    state.update({f"backbone.neck.{k}": v for k, v in ours.neck.state_dict().items()})
    head = ours.detector.head
    cls_head, reg_head = net.head.classification_head, net.head.regression_head
    state.update(_tower_state(head.cls_tower, cls_head.conv, "head.classification_head.conv"))
    state.update(_tower_state(head.reg_tower, reg_head.conv, "head.regression_head.conv"))
    state.update(_conv_state(head.cls_logits, "head.classification_head.cls_logits"))
    state.update(_conv_state(head.box_regression, "head.regression_head.bbox_reg"))
    if head.centerness is not None:  # on the regression tower in both
        state.update(_conv_state(head.centerness, "head.regression_head.bbox_ctrness"))
    return state


def _use_our_anchors(net: nn.Module, ours: PointINS) -> None:
    """torchvision's generator places ``cell + (x*s, y*s)``: our cells shifted by ``s/2``."""
    generator = ours.detector.anchor_generator
    net.anchor_generator.cell_anchors = [
        generator.cell_anchors(level) + stride / 2 for level, stride in enumerate(generator.strides)
    ]


def _channels_last(module: nn.Module, args: tuple) -> tuple:
    """Our network runs channels-last (``PointINS.features``), torchvision's batch is
    contiguous. In the same memory format the convolutions take the same kernels, and the
    two compute the same numbers, not only close ones (and faster on CPU)."""
    return (args[0].contiguous(memory_format=torch.channels_last),)


def _pair(compose_cfg: Callable, case: str) -> tuple[PointINS, nn.Module]:
    """Our detector of ``CASES[case]`` (timm's initialisation under a fixed seed, then a
    random head) and torchvision's with a copy of its weights and anchors; built once per
    module (the tests set the mode they need and change no weight)."""
    if case in _PAIRS:
        return _PAIRS[case]
    parts = _config(compose_cfg, case)
    args = (parts["backbone"], parts["neck"], parts["detector"])
    detector = CASES[case][0]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ours = build_model(*args, mask=None, num_classes=NUM_CLASSES)
        net = build_torchvision(detector, *args, NUM_CLASSES)
    _randomise_head(ours, seed=0)
    if detector == "retinanet" and parts["detector"]["head"]["group_norm"]:
        _zero_tower_biases(ours)
    assert isinstance(net.transform, IdentityTransform)
    net.load_state_dict(_torchvision_state(ours, net), strict=True)
    _use_our_anchors(net, ours)
    net.to(memory_format=torch.channels_last)
    net.backbone.register_forward_pre_hook(_channels_last)
    _PAIRS[case] = ours, net
    return ours, net


def _batch(seed: int = 0) -> Tensor:
    """The two images, seeded, zero-padded to 128 x 256 as both models pad them."""
    gen = torch.Generator().manual_seed(seed)
    batch = pad_images([torch.randn(3, h, w, generator=gen) for h, w in IMAGE_SIZES], 32)
    assert batch.shape[-2:] == (128, 256)
    return batch


def _record(module: nn.Module, seen: dict, key: str):
    return module.register_forward_hook(lambda m, args, out: seen.__setitem__(key, out))


# ------------------------------------------------------------------------------ anchors
class _StridesOnly(nn.Module):
    """What ``build_retinanet`` / ``build_fcos`` read of the pyramid."""

    out_channels = 64
    strides = STRIDES


@pytest.mark.parametrize("case", ["retinanet", "fcos"])
def test_torchvision_anchors_are_ours_shifted_rounded_reordered(compose_cfg, case):
    """The anchors ``build_torchvision`` gives torchvision: per location the same
    ``4·s·2^{0,1/3,2/3} × (0.5, 1, 2)`` boxes (RetinaNet) or the ``s × s`` cell (FCOS), but
    centred on ``(x*s, y*s)`` instead of ``((x+0.5)*s, (y+0.5)*s)``, with corners rounded
    to integers and, for RetinaNet, ratio-major instead of scale-major."""
    detector_cfg = _config(compose_cfg, case)["detector"]
    generator = instantiate(detector_cfg["anchor_generator"], strides=STRIDES)
    net = {"retinanet": build_retinanet, "fcos": build_fcos}[case](
        _StridesOnly(), detector_cfg, NUM_CLASSES
    )
    sizes = [(256 // s, 256 // s) for s in STRIDES]
    features = [torch.zeros(1, 1, h, w) for h, w in sizes]
    theirs = net.anchor_generator(ImageList(torch.zeros(1, 3, 256, 256), [(256, 256)]), features)
    theirs = theirs[0].split([h * w * generator.num_anchors for h, w in sizes])
    ours = generator(sizes, "cpu")
    for level, stride in enumerate(STRIDES):
        cell = generator.cell_anchors(level)  # (A, 4), scale-major
        their_cell = (
            cell.view(3, 3, 4).transpose(0, 1).reshape(9, 4) if case == "retinanet" else cell
        )
        centres = ours[level].view(-1, len(cell), 4) - cell  # (HW, A, 4)
        expected = centres - stride / 2 + their_cell.round()
        torch.testing.assert_close(theirs[level], expected.reshape(-1, 4), rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------ detections
def _assert_same_detections(ours: list, theirs: list[dict[str, Tensor]], limit: int) -> int:
    """torchvision's detections less the boxes that clipping left empty are ours, or the
    start of ours where those empty boxes took places within torchvision's ``limit``.
    Returns how many empty boxes torchvision reported."""
    dropped = 0
    for det, tv in zip(ours, theirs, strict=True):
        boxes = tv["boxes"]
        non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        dropped += int((~non_empty).sum())
        n = int(non_empty.sum())
        assert 0 < n <= len(det) <= limit
        if n == len(boxes):
            assert len(det) == n
        torch.testing.assert_close(det.boxes[:n], boxes[non_empty], rtol=0, atol=1e-4)
        torch.testing.assert_close(det.scores[:n], tv["scores"][non_empty], rtol=0, atol=1e-6)
        assert torch.equal(det.labels[:n], tv["labels"][non_empty])
    return dropped


@pytest.mark.parametrize("case", list(CASES))
def test_same_detections(compose_cfg, case):
    """Eval mode, two images of different sizes in one padded batch: the same FPN levels,
    head outputs, and boxes, scores and labels after thresholds, per-level top-k, clipping,
    class-wise NMS and the per-image limit."""
    ours, net = _pair(compose_cfg, case)
    ours.eval(), net.eval()
    batch = _batch()
    seen: dict = {}
    hooks = [
        _record(ours.neck, seen, "levels"),
        _record(ours.detector.head, seen, "outputs"),
        _record(net.backbone, seen, "their_levels"),
    ]
    try:
        with torch.no_grad():
            detections = ours.detect(batch, IMAGE_SIZES)
            theirs = net(unpad(batch, IMAGE_SIZES))
            head = net.head(seen["levels"])
    finally:
        for hook in hooks:
            hook.remove()
    for mine, their_level in zip(seen["levels"], seen["their_levels"].values(), strict=True):
        torch.testing.assert_close(mine, their_level)
    outputs = seen["outputs"]
    torch.testing.assert_close(cat_levels(outputs.cls_logits), head["cls_logits"])
    torch.testing.assert_close(cat_levels(outputs.box_regression), head["bbox_regression"])
    if outputs.centerness is not None:
        torch.testing.assert_close(cat_levels(outputs.centerness), head["bbox_ctrness"][..., 0])

    dropped = _assert_same_detections(detections, theirs, DETECTIONS_PER_IMG)
    if case == "fcos":  # short (l, t, r, b) on the padding of the second image
        assert dropped > 0


# ------------------------------------------------------------------------------ losses
def _losses(ours: PointINS, net: nn.Module, batch: Tensor):
    """Both models' training losses of ``batch`` and ``TARGETS`` (values only); asserts the
    same anchors and the same assignment. Returns our losses, torchvision's, what the losses
    read (torchvision's head outputs, anchors and matches; our head outputs) and our
    training state."""
    ours.train(), net.train()
    seen: dict = {}
    compute_loss = net.head.compute_loss

    def spy(targets, head_outputs, anchors, matched_idxs):
        seen.update(head_outputs=head_outputs, anchors=anchors, matched=torch.stack(matched_idxs))
        return compute_loss(targets, head_outputs, anchors, matched_idxs)

    net.head.compute_loss = spy
    hook = _record(ours.detector.head, seen, "outputs")
    try:
        with torch.no_grad():
            losses, state = ours.detector.forward_train(ours.features(batch), TARGETS)
            theirs = net(list(batch), [dict(t) for t in TARGETS])
    finally:
        del net.head.compute_loss
        hook.remove()
    for anchors in seen["anchors"]:
        torch.testing.assert_close(anchors, state.anchors, rtol=0, atol=1e-4)
    assert torch.equal(seen["matched"], state.matched_idxs)
    return losses, theirs, seen, state


def _image_losses(ours: PointINS, outputs: DenseOutputs, state, i: int) -> dict[str, Tensor]:
    """Our loss of image ``i`` alone, from the batch's head outputs and assignment."""
    one = slice(i, i + 1)
    image_outputs = DenseOutputs(
        [x[one] for x in outputs.cls_logits],
        [x[one] for x in outputs.box_regression],
        None if outputs.centerness is None else [x[one] for x in outputs.centerness],
        [x[one] for x in outputs.poi_features],
    )
    gt_boxes, gt_labels, _ = pad_targets(TARGETS[one])
    assignment = gather_assigned(state.matched_idxs[one], gt_boxes, gt_labels)
    return ours.detector.loss(image_outputs, state.anchors, assignment, ours.detector.box_coder)


def test_retinanet_losses(compose_cfg):
    """Sigmoid focal classification over the non-ignored anchors and L1 on the deltas of
    the positives: equal per image; over the batch, ours is normalised by the batch's
    positives where torchvision averages the per-image normalised losses."""
    ours, net = _pair(compose_cfg, "retinanet")
    assert net.head.regression_head._loss_type == "l1"
    assert ours.detector.loss.smooth_l1_beta == 0.0  # F.smooth_l1_loss at beta 0 is L1
    mine, theirs, seen, state = _losses(ours, net, _batch())
    matched = seen["matched"]  # (B, N)
    assert (matched == -2).any(dim=1).all()  # anchors between the IoU thresholds: ignored
    iou = [
        box_iou(t["boxes"], state.anchors).gather(0, m.clamp(min=0)[None])[0][m >= 0]
        for t, m in zip(TARGETS, matched, strict=True)
    ]  # per image (P_i,): each positive's IoU with its GT
    assert (torch.cat(iou) < 0.5).any()  # positives through the low-quality matches

    per_image = []
    for i in range(len(TARGETS)):
        image_mine = _image_losses(ours, seen["outputs"], state, i)
        image_theirs = net.head.compute_loss(
            TARGETS[i : i + 1],
            {k: v[i : i + 1] for k, v in seen["head_outputs"].items()},
            seen["anchors"][i : i + 1],
            [matched[i]],
        )
        torch.testing.assert_close(image_mine["loss_cls"], image_theirs["classification"])
        torch.testing.assert_close(image_mine["loss_box_reg"], image_theirs["bbox_regression"])
        per_image.append(image_theirs)

    positives = (matched >= 0).sum(dim=1).float()  # (B,)
    assert positives[0] != positives[1]  # the two normalisations differ here
    for key, their_key in [("loss_cls", "classification"), ("loss_box_reg", "bbox_regression")]:
        per = torch.stack([losses[their_key] for losses in per_image])
        torch.testing.assert_close(theirs[their_key], per.mean())
        torch.testing.assert_close(mine[key], (per * positives).sum() / positives.sum())


def test_fcos_losses(compose_cfg):
    """Focal classification and centre-ness BCE, both over the batch's positives, are
    equal; the GIoU term is the same per-positive GIoU losses, averaged (torchvision) or
    weighted by the centre-ness targets (ours, as the FCOS and AdelaiDet code)."""
    ours, net = _pair(compose_cfg, "fcos")
    mine, theirs, seen, _ = _losses(ours, net, _batch())
    torch.testing.assert_close(mine["loss_cls"], theirs["classification"])
    torch.testing.assert_close(mine["loss_centerness"], theirs["bbox_ctrness"])

    matched = seen["matched"]  # (B, N)
    positive = matched >= 0
    anchors = torch.stack(seen["anchors"])[positive]  # (P, 4)
    gt = torch.stack([t["boxes"][m.clamp(min=0)] for t, m in zip(TARGETS, matched, strict=True)])
    gt = gt[positive]  # (P, 4)
    boxes = net.head.box_coder.decode(seen["head_outputs"]["bbox_regression"][positive], anchors)
    giou = generalized_box_iou_loss(boxes, gt, reduction="none")  # (P,)
    ltrb = net.head.box_coder.encode(anchors, gt)  # (P, 4)
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    centerness = torch.sqrt(
        lr.min(-1).values / lr.max(-1).values * tb.min(-1).values / tb.max(-1).values
    )
    torch.testing.assert_close(theirs["bbox_regression"], giou.sum() / positive.sum())
    torch.testing.assert_close(mine["loss_box_reg"], (giou * centerness).sum() / centerness.sum())


def test_fcos_assignment_is_exercised(compose_cfg):
    """The targets reach three FCOS levels through the size ranges, and some locations are
    positive for two GTs, where the smaller box wins."""
    detector = _config(compose_cfg, "fcos")["detector"]
    generator = instantiate(detector["anchor_generator"], strides=STRIDES)
    assigner = instantiate(detector["assigner"])
    sizes = [(128 // s, 256 // s) for s in STRIDES]
    anchors = torch.cat(generator(sizes, "cpu"))
    level_ids = generator.level_ids(sizes)
    boxes = TARGETS[0]["boxes"]
    one = torch.ones(1, 1, dtype=torch.bool)
    alone = torch.stack([assigner(anchors, b.view(1, 1, 4), one, level_ids)[0] for b in boxes])
    alone = alone == 0  # (G, N): the GT alone would take the location
    contested = alone.sum(0) > 1
    assert contested.any()
    matched = assigner(anchors, boxes[None], torch.ones(1, len(boxes), dtype=torch.bool), level_ids)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    smallest = torch.where(alone, areas[:, None], math.inf).argmin(0)
    assert torch.equal(matched[0][contested], smallest[contested])
    assert len(level_ids[matched[0] >= 0].unique()) >= 3
