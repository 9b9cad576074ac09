"""What ``make bench`` measures: the models, their configs and sizes, and one measurement
(:func:`run_case`) of each case of :func:`plan`.

Every model runs on the same machine, with the same backbone, FPN width and input size, and
a fixed number of detections per image (``--detections``): the score thresholds are zero,
so NMS and the mask branch see the same work in every model.

Cases (``kind``):

* ``infer``: inference images/second and peak memory of PointINS-RetinaNet,
  PointINS-FCOS, the same detectors with ``mask=none`` (their difference is the mask
  module's cost: template gather, instance-aware weights, dynamic conv, mask head and
  paste), torchvision's Mask R-CNN on our backbone and FPN
  (:func:`pointins.baselines.build_maskrcnn`: width-matched) and the stock
  ``maskrcnn_resnet50_fpn`` built without weights; PointINS-FCOS with 4K x 4K masks
  (``model.mask.output_scale=4``: the cost of the finer output) and with the other
  template read than the recipe's (``point templates`` beside the demo's box ones, ``box
  templates`` beside the paper's point ones); PointINS-FCOS exported to
  ONNX and run by onnxruntime on the CPU (``pip install -e .[export]``), one image at a
  time, boxes scaled and masks pasted in Python; also against the number of detections
  (``table: detections``) and the input size (``table: scales``);
* ``train``: seconds per optimiser step and peak memory at the recipe's batch size,
  PointINS, the plain detectors and Mask R-CNN (width-matched, its RoI heads fed as in
  real training: :mod:`benchmarks.roi_work`), on one real batch of the embedded training
  data, with the mask RoIs per image each model trained on; PointINS with
  ``checkpoint_towers=true`` (memory for time) and PointINS-FCOS with 4K x 4K masks and
  with the other template read;
* ``loader``: the training dataloader alone (default worker count), images/second;
* ``eval_memory``: memory of the evaluation loop (predict, RLE-encode, accumulate), read
  after given numbers of val images of one pass: streaming evaluation keeps it flat.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchvision.models.detection import maskrcnn_resnet50_fpn

from benchmarks.config import compose_config
from benchmarks.measure import PeakMemory, epochs, measure, to_device
from benchmarks.roi_work import POINTINS_AS_TRAINED, RoICounter, feed_like_real_training
from pointins.baselines import IdentityTransform, TorchvisionDetector, build_torchvision
from pointins.engine.runner import build_datamodule
from pointins.model import build_model
from pointins.structures import Batch

POINTINS = ("pointins-retinanet", "pointins-fcos")
DETECTORS = ("retinanet", "fcos")  # mask=none
MASKRCNN = "maskrcnn"  # torchvision Mask R-CNN on our backbone + FPN (width-matched)
MASKRCNN_STOCK = "maskrcnn_resnet50_fpn"  # torchvision's own R50-FPN-256, no weights
KINDS = ("infer", "train", "loader", "eval_memory", "compile")  # the measurements, for --only

#: config choices that make each benchmarked PointINS model
MODEL_OVERRIDES = {
    "pointins-retinanet": ["detector=retinanet"],
    "pointins-fcos": ["detector=fcos"],
    "retinanet": ["detector=retinanet", "mask=none"],
    "fcos": ["detector=fcos", "mask=none"],
}


# ------------------------------------------------------------------------- models
def recipe(args: argparse.Namespace, extra: Sequence[str] = ()) -> DictConfig:
    """The recipe's config at the benchmark's input size, zero score threshold, random
    weights (speed and memory do not depend on them; nothing downloads). The paper's
    set-up (``--experiment none``) keeps its frozen BatchNorm."""
    weights = ["model.backbone.pretrained=false"]
    if args.experiment is None:
        weights.append("model.backbone.norm=frozen_bn")
    overrides = [
        *weights,
        f"data.train_scales=[{args.size}]",
        f"data.test_scale={args.size}",
        f"data.max_size={args.max_size}",
        "model.detector.postprocess.score_thresh=0.0",
        f"model.detector.postprocess.detections_per_img={args.detections}",
        *args.overrides,
        *extra,
    ]
    return compose_config(overrides, experiment=args.experiment)


def build(name: str, cfg: DictConfig, num_classes: int, detections: int) -> nn.Module:
    """One benchmarked model, randomly initialised, with ``detections`` per image
    (``cfg`` composed with ``MODEL_OVERRIDES[name]``). Every model has
    ``predict(images, image_sizes, orig_sizes)``."""
    parts = OmegaConf.to_container(cfg.model, resolve=True)
    if name in MODEL_OVERRIDES:
        return build_model(
            parts["backbone"], parts["neck"], parts["detector"], parts.get("mask"), num_classes
        )
    if name == MASKRCNN:
        net = build_torchvision(
            "maskrcnn", parts["backbone"], parts["neck"], parts["detector"], num_classes
        )
    elif name == MASKRCNN_STOCK:
        net = maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes + 1
        )
        net.transform = IdentityTransform()
    else:
        raise ValueError(f"unknown model {name!r}")
    net.roi_heads.score_thresh = 0.0
    net.roi_heads.detections_per_img = detections
    return TorchvisionDetector("maskrcnn", net)


def batch_reader(cfg: DictConfig, train: bool) -> tuple[Callable[[int], Batch], list[str]]:
    """``read(batch_size)``: images of the embedded split read, augmented (train) and
    collated as the loaders do, and the class names. Validation batches are the first
    images in file order, as the validation loader takes them; a training batch is the
    first images of the first image's orientation, as the training loader groups them (a
    landscape and a portrait image padded together would make a larger input than any
    training step sees)."""
    dm = build_datamodule(cfg)
    dm.setup("fit" if train else "validate")
    dataset = dm.train_dataset if train else dm.val_dataset
    collate = dm.train_collate if train else dm.collate
    indices = list(range(len(dataset)))
    if train:
        orientations = dataset.orientations()  # the training loader's batch groups
        indices = [i for i in indices if orientations[i] == orientations[0]]

    def read(batch_size: int) -> Batch:
        if batch_size > len(indices):
            split = "training images of one orientation" if train else "validation images"
            raise ValueError(
                f"a batch of {batch_size} needs as many {split}; the data has {len(indices)}: "
                "lower the batch size or raise data.num_train / data.num_val"
            )
        return collate([dataset[i] for i in indices[:batch_size]])

    return read, dm.class_names


def sample_batch(cfg: DictConfig, train: bool, batch_size: int) -> tuple[Batch, list[str]]:
    """One batch of the embedded data (train: with targets and augmentation)."""
    read, class_names = batch_reader(cfg, train)
    return read(batch_size), class_names


def inference_fn(name: str, model: nn.Module, batch: Batch) -> Callable[[], list[dict]]:
    """Images in, detections with masks pasted at the original resolution out."""
    return lambda: model.predict(batch.images, batch.image_sizes, batch.orig_sizes)


def onnx_inference_fn(
    model: nn.Module, cfg: DictConfig, batch: Batch, class_names: list[str], out: Path
) -> Callable[[], list[dict]]:
    """The model exported to ONNX (:mod:`pointins.inference.export`), run by onnxruntime on the CPU
    one image at a time, boxes scaled and masks pasted in Python: what
    :class:`~pointins.inference.export.OnnxPredictor` does after the resize."""
    from pointins.inference.export import OnnxPredictor, export_onnx

    preprocess = instantiate(cfg.data).preprocess
    predictor = OnnxPredictor(export_onnx(model, preprocess, out / "model.onnx", class_names))
    div = preprocess.size_divisibility
    images = [  # each image padded on its own, as the exported graph takes it
        image[None, :, : -(-h // div) * div, : -(-w // div) * div]
        for image, (h, w) in zip(batch.images.cpu(), batch.image_sizes, strict=True)
    ]

    def run() -> list[dict]:
        outputs = []
        for image, size, orig in zip(images, batch.image_sizes, batch.orig_sizes, strict=True):
            outputs.append({"scores": predictor.predict_padded(image, size, orig).scores})
        return outputs

    return run


def training_fn(name: str, model: nn.Module, batch: Batch) -> Callable[[], None]:
    """One optimiser step (AdamW) on ``batch``."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    if isinstance(model, TorchvisionDetector):

        def losses() -> dict[str, Tensor]:
            return model.losses(batch.images, batch.image_sizes, batch.targets)
    else:

        def losses() -> dict[str, Tensor]:
            return model.losses(batch.images, batch.targets)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        sum(loss.float() for loss in losses().values()).backward()
        optimizer.step()

    return step


# ------------------------------------------------------------------ one measurement
def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """One measurement (in its own process on CPU: see :func:`benchmarks.measure.case_runner`)."""
    logging.basicConfig(level=logging.WARNING)
    args = argparse.Namespace(**case["args"])
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kind = case["kind"]
    model_choice = MODEL_OVERRIDES.get(case.get("model", ""), [])
    detections = case.get("detections", args.detections)
    as_trained = POINTINS_AS_TRAINED if kind == "train" and case.get("model") in POINTINS else []
    cfg = recipe(
        args,
        [
            *model_choice,
            *as_trained,
            *case.get("overrides", []),
            f"model.detector.postprocess.detections_per_img={detections}",
        ],
    )
    if kind == "loader":
        dm = build_datamodule(cfg)
        dm.setup("fit")
        loader = dm.train_dataloader()
        batches = epochs(loader)
        next(batches)  # workers started
        start, images = time.perf_counter(), 0
        for _ in range(args.loader_batches):
            images += len(next(batches))
        return {
            "images_per_second": images / (time.perf_counter() - start),
            "num_workers": loader.num_workers,
        }

    if kind == "compile":
        return compile_case(case, args, cfg, device)
    train = kind == "train"
    batch_size = int(cfg.data.batch_size) if train else args.batch_size
    batch, class_names = sample_batch(cfg, train, batch_size)
    model = build(case["model"], cfg, len(class_names), detections).to(device)
    batch = to_device(batch, device)
    autocast = torch.autocast(device.type, enabled=case.get("amp", False))
    if train:
        model.train()
        if case["model"] == MASKRCNN:
            feed_like_real_training(model)  # its RoI heads sample as in real training
        counter = RoICounter(model)
        step = training_fn(case["model"], model, batch)

        def autocast_step() -> None:
            with autocast:
                step()

        result = measure(autocast_step, device, args.warmup, args.train_repeats)
        del result["output"]
        result["images_per_second"] = batch_size / result["seconds"]
        return {**result, **counter.summary()}

    model.eval()
    if case.get("variant") == "onnxruntime":
        run = onnx_inference_fn(model, cfg, batch, class_names, Path(args.out) / "onnx")
    else:
        run = inference_fn(case["model"], model, batch)
    with torch.no_grad(), autocast:
        if kind == "eval_memory":
            return eval_memory(case, args, cfg, model, device)
        result = measure(run, device, args.warmup, args.repeats)
    counts = [len(p["scores"]) for p in result.pop("output")]
    result["images_per_second"] = len(batch) / result["seconds"]
    result["detections_per_image"] = sum(counts) / len(counts)
    return result


def compile_case(case, args, cfg, device) -> dict[str, Any]:
    """PointINS-FCOS trained on the first ``--compile-batches`` batches of the training
    loader (multi-scale: their padded sizes vary), eager or ``torch.compile``d
    (``model.compile=true``; ``case['compile_options']`` go to ``torch.compile``), with or
    without ``data.size_buckets``: the distinct input
    shapes met, the graphs compiled (``unique_graphs``, recompiles included), the total
    time and the median of the last quarter of the steps (once compiled)."""
    from torch._dynamo.utils import counters

    dm = build_datamodule(cfg)
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    batches = [to_device(next(loader), device) for _ in range(args.compile_batches)]
    model = build("pointins-fcos", cfg, dm.num_classes, args.detections).to(device).train()
    torch._dynamo.reset()
    counters.clear()
    if case["compile"]:
        model.compile_network(**case.get("compile_options", {}))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for batch in batches:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sum(model.losses(batch.images, batch.targets).values()).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    tail = sorted(times[-max(1, len(times) // 4) :])
    return {
        "shapes": len({tuple(b.images.shape) for b in batches}),
        "graphs": int(counters["stats"]["unique_graphs"]),
        "total_seconds": sum(times),
        "steady_seconds": tail[len(tail) // 2],
    }


def eval_memory(case, args, cfg, model, device) -> dict[str, Any]:
    """Memory of predict + RLE-encode + accumulate, read after each of
    ``case['checkpoints']`` images of ONE pass over the split: the memory held at that
    point (``held_mib``; it would climb with the count if the loop kept anything per
    image) and the peak so far (``peak_mib``; a maximum over images, set by the largest
    image and detection count met so far, so it rises in steps and then levels off)."""
    dm = build_datamodule(cfg)
    dm.setup("validate")
    out_dir = Path(args.out) / "eval_memory"
    evaluator = dm.build_evaluator(out_dir)
    checkpoints = sorted(case["checkpoints"])
    readings: list[dict[str, Any]] = []
    seen, largest = 0, (0, 0)

    def read() -> None:
        memory.read()
        readings.append(
            {
                "images": seen,
                "peak_mib": memory.mib,
                "held_mib": memory.held(),
                "largest_original": largest,
            }
        )

    with PeakMemory(device) as memory:
        for batch in dm.val_dataloader():
            if seen >= checkpoints[-1]:
                break
            batch = to_device(batch, device)
            predictions = model.predict(batch.images, batch.image_sizes, batch.orig_sizes)
            evaluator.update(batch.image_ids, predictions)
            del predictions
            seen += len(batch)
            largest = max([largest, *batch.orig_sizes], key=lambda s: s[0] * s[1])
            while len(readings) < len(checkpoints) and seen >= checkpoints[len(readings)]:
                read()
        if len(readings) < len(checkpoints):  # the split ran out first
            read()
    return {"readings": readings}


# ------------------------------------------------------------------------ the plan
def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every measurement of one benchmark run, in order."""
    cases: list[dict[str, Any]] = []
    models = [*POINTINS, *DETECTORS, MASKRCNN]
    if not args.skip_stock:
        models.append(MASKRCNN_STOCK)
    precisions = [False, True] if args.amp else [False]
    # the template read the recipe does not use: box templates beside the paper's point ones
    other = {"point": "box", "box": "point"}[recipe(args).model.mask.template_from]
    variants = [
        {"variant": "4K masks", "overrides": ["model.mask.output_scale=4"]},
        {"variant": f"{other} templates", "overrides": [f"model.mask.template_from={other}"]},
    ]
    for amp in precisions:
        cases += [{"kind": "infer", "model": m, "amp": amp} for m in models]
        cases += [{"kind": "infer", "model": "pointins-fcos", "amp": amp, **v} for v in variants]
    if args.device == "cpu" and importlib.util.find_spec("onnxruntime") is not None:
        cases.append({"kind": "infer", "model": "pointins-fcos", "variant": "onnxruntime"})
    for amp in precisions:
        cases += [
            {"kind": "train", "model": m, "amp": amp} for m in (*POINTINS, *DETECTORS, MASKRCNN)
        ]
        cases += [
            {
                "kind": "train",
                "model": m,
                "amp": amp,
                "variant": "checkpoint_towers",
                "overrides": ["model.detector.head.checkpoint_towers=true"],
            }
            for m in POINTINS
        ]
        cases += [{"kind": "train", "model": "pointins-fcos", "amp": amp, **v} for v in variants]
    for n in args.detection_counts:
        cases += [
            {"kind": "infer", "model": m, "detections": n, "table": "detections"}
            for m in (*POINTINS, MASKRCNN)
        ]
    for s in args.scales:
        overrides = [
            f"data.test_scale={s}",
            f"data.max_size={round(s * args.max_size / args.size)}",
        ]
        cases += [
            {"kind": "infer", "model": m, "overrides": overrides, "scale": s, "table": "scales"}
            for m in (*POINTINS, MASKRCNN)
        ]
    cases.append({"kind": "loader"})
    cases.append(
        {
            "kind": "eval_memory",
            "model": "pointins-fcos",
            "checkpoints": sorted(args.eval_images),
            "overrides": [
                f"data.root={args.eval_data}",
                "data.num_train=8",
                f"data.num_val={max(args.eval_images)}",
                "data.val_batch_size=1",
            ],
        }
    )
    if args.compile or "compile" in (args.only or []):  # minutes of compiling: opt-in
        buckets = f"data.size_buckets=[{','.join(map(str, args.size_buckets))}]"
        cases += [
            {"kind": "compile", "compile": False, "variant": "eager"},
            {"kind": "compile", "compile": True, "variant": "compile"},
            {"kind": "compile", "compile": True, "variant": "compile + size buckets",
             "overrides": [buckets]},
        ]  # fmt: skip
    cases = [c for c in cases if not args.models or c.get("model") in args.models]
    return [c for c in cases if not args.only or c["kind"] in args.only]
