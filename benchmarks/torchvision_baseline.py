"""torchvision's own detectors trained on our data, backbone, FPN and wall-clock budget.

The comparison row "PointINS vs torchvision at equal budget": train
``torchvision.models.detection.{FCOS, RetinaNet, MaskRCNN}`` with the recipe's datamodule
(same images, sizes, augmentation, batch size), the recipe's timm backbone and FPN
(same width), the recipe's optimiser and warm-up, for a fixed number of minutes, then
score it with the project's COCO evaluator.

    python -m benchmarks.torchvision_baseline --model fcos --minutes 15
    python -m benchmarks.torchvision_baseline --model maskrcnn --minutes 15 data.batch_size=2
    python -m benchmarks.torchvision_baseline --model retinanet --experiment none data=coco

Trailing arguments are Hydra overrides of ``conf/train.yaml`` (composed with
``experiment=<--experiment>``, ``shapes`` unless told). The output folder (``--out``,
default ``outputs/baselines/<model>-<timestamp>``) receives the evaluator's
``metrics.json``, ``bbox.json`` / ``segm.json`` and ``result.json``: one line with the
iterations done, the seconds trained and the metrics.

Choices where torchvision and our recipe differ (each keeps torchvision's model and
changes only what the comparison needs to be equal):

* Resizing and normalisation belong to our datamodule, so the models' internal
  ``GeneralizedRCNNTransform`` becomes :class:`IdentityTransform`: it only pads the
  un-padded images into a batch (to a multiple of 32, torchvision's default; its RoI
  pooler infers each level's scale from the padded size and would misjudge it with our
  multiple of 128 on small images), and returns detections in input coordinates.
  :func:`rescale_predictions` maps them to the original image, as torchvision's own
  ``postprocess`` does: boxes scaled, Mask R-CNN's 28×28 masks pasted at the original
  resolution with torchvision's ``paste_masks_in_image`` and thresholded at 0.5.
* Backbone: our ``TimmBackbone`` + ``FPN`` (P3–P7, strides 8..128) from ``cfg.model``.
* FCOS: one anchor per location, sized to its stride; heads with the recipe's
  ``model.detector.num_convs`` convs (torchvision's ``FCOSHead`` takes it).
* RetinaNet: 9 anchors 4·s·2^{0,1/3,2/3} × ratios (0.5, 1, 2) per level (SPEC §2); the
  towers, fixed at 4 convs in torchvision, are cut to ``num_convs`` (slicing their
  ``nn.Sequential``), with GroupNorm(32) when the recipe's ``model.detector.group_norm``
  is set (``experiment=shapes``; torchvision's ``retinanet_resnet50_fpn_v2`` head).
* Mask R-CNN on P3–P7 instead of its usual P2–P6: RPN anchors 4·s (32..512) × (0.5,1,2)
  on all five levels; RoIAlign (box 7×7, mask 14×14) over P3–P6 with torchvision's
  level mapper (level 4 at 224 px), so objects under 112 px pool from P3. The box head's
  ``representation_size`` (1024 in torchvision) and the mask head's four conv widths
  and deconv width (256) are the FPN width; everything else is torchvision's default.
  It reserves label 0 for background: ``num_classes = C + 1``, target labels + 1 and
  predicted labels - 1. FCOS and RetinaNet do not (``num_classes = C``).
* Inference: score threshold 0.05, 100 detections per image, top 1000 candidates per
  level, NMS IoU 0.6 (FCOS) / 0.5 (RetinaNet, Mask R-CNN).
* Schedule: the recipe's optimiser, linear warm-up (``optim.scheduler.warmup_steps``,
  ``warmup_factor``) and ``gamma``; as the budget is time, the step decays happen at
  fractions of the budget: the recipe's epoch milestones over ``optim.max_epochs``
  (``experiment=shapes``: 10/14 and 13/14; the 1x recipes: 8/12 and 11/12), or 0.7 and
  0.9 when the recipe counts steps; ``--decay-at`` overrides. Gradient clipping as
  ``trainer.gradient_clip_val`` / ``gradient_clip_algorithm``.
* Precision: ``trainer.precision`` as Lightning runs it: ``bf16-mixed`` trains and
  evaluates under ``torch.autocast(dtype=bfloat16)`` (``experiment=shapes`` resolves
  ``${fastest_precision:}`` to it on CPUs with native bfloat16), ``32-true`` in fp32.
* The budget counts the training loop only (data loading included); building the
  model and the final evaluation are outside it. Training stops after the first
  iteration that ends past the budget, so ``seconds`` in ``result.json`` may exceed it
  by up to one iteration. ``--max-iters`` and ``--max-val-batches`` shorten smoke runs
  (a partial val set gives numbers that are not comparable).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchvision.models.detection import FCOS, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from datamodules.collate import Batch
from pointins.model import p6_input

log = logging.getLogger("benchmarks.torchvision_baseline")

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MODELS = ("fcos", "retinanet", "maskrcnn")
# torchvision's FCOS and RetinaNet score C sigmoid classes; Mask R-CNN's softmax has a
# background class 0 in front of them.
RESERVES_BACKGROUND = {"fcos": False, "retinanet": False, "maskrcnn": True}
SIZE_DIVISIBLE = 32
SCORE_THRESH = 0.05
DETECTIONS_PER_IMG = 100
TOPK_CANDIDATES = 1000
MASK_THRESHOLD = 0.5


# --------------------------------------------------------------------------- config
def compose_config(overrides: Sequence[str] = (), experiment: str | None = "shapes") -> DictConfig:
    """``conf/train.yaml`` with ``experiment=<experiment>`` and ``overrides``, its
    ``hydra:`` interpolations resolvable (as in a ``train.py`` run)."""
    GlobalHydra.instance().clear()
    head = [f"experiment={experiment}"] if experiment else []
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*head, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


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


def build_pyramid(cfg: DictConfig) -> PyramidBackbone:
    """The recipe's backbone and FPN (``cfg.model.backbone``, ``cfg.model.neck``)."""
    body = instantiate(cfg.model.backbone)
    neck = instantiate(
        cfg.model.neck,
        in_channels=body.out_channels,
        in_strides=body.strides,
        p6_from=p6_input(cfg.model.neck, cfg.model.detector),
    )
    return PyramidBackbone(body, neck)


def _head_convs(cfg: DictConfig) -> int:
    return int(cfg.model.detector.get("num_convs", 4))


def build_fcos(cfg: DictConfig, num_classes: int) -> FCOS:
    backbone = build_pyramid(cfg)
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in backbone.strides),  # one point per location, size = stride
        aspect_ratios=((1.0,),) * len(backbone.strides),
    )
    head = FCOSHead(backbone.out_channels, 1, num_classes, num_convs=_head_convs(cfg))
    return FCOS(
        backbone,
        num_classes,
        anchor_generator=anchors,
        head=head,
        score_thresh=SCORE_THRESH,
        nms_thresh=0.6,
        detections_per_img=DETECTIONS_PER_IMG,
        topk_candidates=TOPK_CANDIDATES,
    )


def build_retinanet(cfg: DictConfig, num_classes: int) -> RetinaNet:
    backbone = build_pyramid(cfg)
    anchors = AnchorGenerator(
        sizes=tuple(tuple(4 * s * 2 ** (i / 3) for i in range(3)) for s in backbone.strides),
        aspect_ratios=((0.5, 1.0, 2.0),) * len(backbone.strides),
    )
    # GroupNorm(32) in the towers when the recipe's detector has it (torchvision's v2 head)
    norm = partial(nn.GroupNorm, 32) if cfg.model.detector.get("group_norm") else None
    head = RetinaNetHead(
        backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes, norm
    )
    num_convs = _head_convs(cfg)
    head.classification_head.conv = head.classification_head.conv[:num_convs]
    head.regression_head.conv = head.regression_head.conv[:num_convs]
    return RetinaNet(
        backbone,
        num_classes,
        anchor_generator=anchors,
        head=head,
        score_thresh=SCORE_THRESH,
        nms_thresh=0.5,
        detections_per_img=DETECTIONS_PER_IMG,
        topk_candidates=TOPK_CANDIDATES,
    )


def build_maskrcnn(cfg: DictConfig, num_classes: int) -> MaskRCNN:
    """``num_classes`` foreground classes; the model itself has ``num_classes + 1``."""
    backbone = build_pyramid(cfg)
    width = backbone.out_channels
    anchors = AnchorGenerator(
        sizes=tuple((4 * s,) for s in backbone.strides),  # 32..512 on P3..P7
        aspect_ratios=((0.5, 1.0, 2.0),) * len(backbone.strides),
    )
    roi_levels = backbone.names[:4]  # P3..P6
    box_pool = MultiScaleRoIAlign(roi_levels, output_size=7, sampling_ratio=2)
    mask_pool = MultiScaleRoIAlign(roi_levels, output_size=14, sampling_ratio=2)
    return MaskRCNN(
        backbone,
        None,  # given by the predictors (torchvision insists)
        rpn_anchor_generator=anchors,
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(width * 7 * 7, width),
        box_predictor=FastRCNNPredictor(width, num_classes + 1),
        box_score_thresh=SCORE_THRESH,
        box_nms_thresh=0.5,
        box_detections_per_img=DETECTIONS_PER_IMG,
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(width, (width,) * 4, dilation=1),
        mask_predictor=MaskRCNNPredictor(width, width, num_classes + 1),
    )


_BUILDERS = {"fcos": build_fcos, "retinanet": build_retinanet, "maskrcnn": build_maskrcnn}


def build_model(name: str, cfg: DictConfig, num_classes: int) -> nn.Module:
    """torchvision's ``name`` detector for ``num_classes`` dataset classes, on the recipe's
    backbone and FPN, with the resizing transform replaced by :class:`IdentityTransform`."""
    if name not in _BUILDERS:
        raise ValueError(f"--model {name!r}: choose one of {', '.join(MODELS)}")
    model = _BUILDERS[name](cfg, num_classes)
    model.transform = IdentityTransform()
    return model


# ----------------------------------------------------------------- data adaptation
def to_torchvision_images(batch: Batch) -> list[Tensor]:
    """The un-padded (3, h, w) images of a padded batch."""
    return [img[:, :h, :w] for img, (h, w) in zip(batch.images, batch.image_sizes, strict=True)]


def to_torchvision_targets(
    batch: Batch, shift_labels: bool, with_masks: bool = False
) -> list[dict[str, Tensor]]:
    """Per image ``boxes`` (n, 4) xyxy in input pixels, ``labels`` (+1 when the model
    reserves 0 for background) and, ``with_masks``, ``masks`` (n, h, w) uint8."""
    targets = []
    for t in batch.targets:
        out = {"boxes": t["boxes"].float(), "labels": t["labels"] + int(shift_labels)}
        if with_masks:
            out["masks"] = t["masks"].to(torch.uint8)
        targets.append(out)
    return targets


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


# ------------------------------------------------------------------------ training
@dataclass
class WallClockSchedule:
    """Learning-rate factor of ``pointins.schedules.warmup_multistep`` with its decays at
    fractions of a time budget instead of at epochs."""

    seconds: float
    decay_at: Sequence[float] = (0.7, 0.9)
    gamma: float = 0.1
    warmup_steps: int = 0
    warmup_factor: float = 0.001

    def factor(self, step: int, elapsed: float) -> float:
        decay = self.gamma ** sum(elapsed >= f * self.seconds for f in self.decay_at)
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            return decay * (self.warmup_factor * (1 - alpha) + alpha)
        return decay


@dataclass
class TrainStats:
    iterations: int
    seconds: float
    images: int
    epochs: float
    last_loss: float


def _clip_gradients(params: Iterable[Tensor], value: float | None, algorithm: str) -> None:
    if value is None:
        return
    if algorithm == "norm":
        nn.utils.clip_grad_norm_(params, value)
    elif algorithm == "value":
        nn.utils.clip_grad_value_(params, value)
    else:
        raise ValueError(f"trainer.gradient_clip_algorithm={algorithm!r}: choose norm or value")


def train_for(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    seconds: float,
    schedule: WallClockSchedule | None = None,
    shift_labels: bool = False,
    with_masks: bool = False,
    clip_value: float | None = None,
    clip_algorithm: str = "norm",
    max_iterations: int | None = None,
    log_every: int = 50,
    precision: str = "32-true",
) -> TrainStats:
    """Train until ``seconds`` of wall clock (data loading included) have passed, or
    ``max_iterations``; epochs repeat as needed (the sampler's ``set_epoch`` is called)."""
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    sampler = getattr(loader, "sampler", None)
    batches_per_epoch = len(loader) if hasattr(loader, "__len__") else 0
    iterations, images, epoch, loss_value = 0, 0, 0, float("nan")
    start = time.perf_counter()
    elapsed = 0.0
    done = False
    while not done:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for batch in loader:
            if schedule is not None:
                factor = schedule.factor(iterations, elapsed)
                for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                    group["lr"] = lr * factor
            targets = to_torchvision_targets(batch, shift_labels, with_masks)
            with autocast_for(precision):
                losses = model(to_torchvision_images(batch), targets)
            loss = sum(loss.float() for loss in losses.values())
            if not torch.isfinite(loss):
                terms = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                raise FloatingPointError(
                    f"Non-finite loss at iteration {iterations}: {terms}. Lower "
                    "optim.optimizer.lr, lengthen optim.scheduler.warmup_steps or set "
                    "trainer.gradient_clip_val."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _clip_gradients(params, clip_value, clip_algorithm)
            optimizer.step()
            iterations += 1
            images += len(batch)
            loss_value = loss.item()
            elapsed = time.perf_counter() - start
            if iterations % log_every == 0:
                terms = " ".join(f"{k}={v.item():.4f}" for k, v in losses.items())
                log.info(
                    "it %d  %.0f s  lr %.3g  loss %.4f (%s)",
                    iterations,
                    elapsed,
                    optimizer.param_groups[0]["lr"],
                    loss_value,
                    terms,
                )
            if elapsed >= seconds or (max_iterations is not None and iterations >= max_iterations):
                done = True
                break
        epoch += 1
    epochs = iterations / batches_per_epoch if batches_per_epoch else float(epoch)
    return TrainStats(iterations, elapsed, images, epochs, loss_value)


def _fp32(x: Tensor) -> Tensor:
    return x.float() if x.is_floating_point() else x


def autocast_for(precision: str | int) -> contextlib.AbstractContextManager:
    """The autocast Lightning wraps training and evaluation steps in for ``precision``
    (on the CPU; the baselines run there)."""
    precision = str(precision)
    if precision in ("32-true", "32"):
        return contextlib.nullcontext()
    if precision in ("bf16-mixed", "bf16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(
        f"trainer.precision={precision!r}: the torchvision baselines run on the CPU in "
        "32-true or bf16-mixed; pass one of those"
    )


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    evaluator: Any,
    shift_labels: bool,
    max_batches: int | None = None,
    precision: str = "32-true",
) -> dict:
    """Score the model on ``loader`` (its first ``max_batches``) with the project's
    evaluator (which writes ``metrics.json`` into its output folder)."""
    model.eval()
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        with autocast_for(precision):
            outputs = model(to_torchvision_images(batch))
        outputs = [{k: _fp32(v) for k, v in o.items()} for o in outputs]
        predictions = rescale_predictions(
            outputs, batch.image_sizes, batch.orig_sizes, shift_labels
        )
        evaluator.update(batch.image_ids, predictions)
    return evaluator.compute()


# ----------------------------------------------------------------------------- CLI
def decay_fractions(optim: Mapping[str, Any]) -> list[float]:
    """The recipe's lr milestones as fractions of its length (epoch milestones over
    ``max_epochs``); 0.7 and 0.9 when the recipe counts steps."""
    scheduler = optim.get("scheduler", {}) or {}
    if scheduler.get("unit", "epoch") == "epoch" and optim.get("max_epochs"):
        return [float(m) / float(optim["max_epochs"]) for m in scheduler.get("milestones", [])]
    return [0.7, 0.9]


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's (partial) optimiser on the trainable parameters."""
    optimizer_cfg = OmegaConf.to_container(cfg.optim.optimizer, resolve=True)
    return instantiate(optimizer_cfg)([p for p in model.parameters() if p.requires_grad])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.torchvision_baseline",
        description="Train a torchvision detector on the recipe's data, backbone and FPN for "
        "a wall-clock budget, then COCO-evaluate it.",
    )
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget")
    parser.add_argument("--out", default=None, help="output folder")
    parser.add_argument(
        "--experiment", default="shapes", help="experiment config composed first ('none': none)"
    )
    parser.add_argument(
        "--decay-at",
        type=float,
        nargs="+",
        default=None,
        help="lr decay points as budget fractions (default: the recipe's milestones)",
    )
    parser.add_argument("--max-iters", type=int, default=None, help="stop earlier (smoke tests)")
    parser.add_argument(
        "--max-val-batches",
        type=int,
        default=None,
        help="evaluate on the first N val batches only (smoke tests; not for reported numbers)",
    )
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's, as train.py)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.batch_size=2")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    experiment = None if args.experiment in ("", "none", "null") else args.experiment
    cfg = compose_config(args.overrides, experiment)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    if cfg.get("seed") is not None:
        torch.manual_seed(int(cfg.seed))
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(args.out or Path(cfg.paths.log_dir) / "baselines" / f"{args.model}-{stamp}")
    out.mkdir(parents=True, exist_ok=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    num_classes = datamodule.num_classes
    model = build_model(args.model, cfg, num_classes)
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "torchvision %s: %d classes, %.2fM trainable parameters, torch threads %d, "
        "batch size %d, budget %.1f min",
        args.model,
        num_classes,
        num_params / 1e6,
        torch.get_num_threads(),
        datamodule.batch_size,
        args.minutes,
    )

    optimizer = build_optimizer(cfg, model)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    scheduler = optim.get("scheduler", {}) or {}
    seconds = args.minutes * 60.0
    schedule = WallClockSchedule(
        seconds=seconds,
        decay_at=args.decay_at if args.decay_at is not None else decay_fractions(optim),
        gamma=float(scheduler.get("gamma", 0.1)),
        warmup_steps=int(scheduler.get("warmup_steps", 0)),
        warmup_factor=float(scheduler.get("warmup_factor", 0.001)),
    )
    log.info("lr schedule: %s", schedule)
    shift_labels = RESERVES_BACKGROUND[args.model]
    stats = train_for(
        model,
        datamodule.train_dataloader(),
        optimizer,
        seconds,
        schedule=schedule,
        shift_labels=shift_labels,
        with_masks=args.model == "maskrcnn",
        clip_value=cfg.trainer.get("gradient_clip_val"),
        clip_algorithm=cfg.trainer.get("gradient_clip_algorithm") or "norm",
        max_iterations=args.max_iters,
        log_every=args.log_every,
        precision=cfg.trainer.precision,
    )
    log.info(
        "trained %d iterations in %.0f s (%.2f epochs)",
        stats.iterations,
        stats.seconds,
        stats.epochs,
    )

    start = time.perf_counter()
    metrics = evaluate(
        model,
        datamodule.val_dataloader(),
        datamodule.build_evaluator(out),
        shift_labels,
        max_batches=args.max_val_batches,
        precision=cfg.trainer.precision,
    )
    result = {
        "model": f"torchvision-{args.model}",
        **asdict(stats),
        "budget_seconds": seconds,
        "eval_seconds": time.perf_counter() - start,
        "trainable_parameters": num_params,
        "batch_size": datamodule.batch_size,
        "torch_threads": torch.get_num_threads(),
        "precision": str(cfg.trainer.precision),
        "val_batches": args.max_val_batches or "all",
        "experiment": experiment,
        "overrides": list(args.overrides),
        "metrics": metrics,
    }
    line = json.dumps(result)
    (out / "result.json").write_text(line + "\n")
    log.info("results in %s", out)
    print(line, flush=True)
    return result


if __name__ == "__main__":
    main()
