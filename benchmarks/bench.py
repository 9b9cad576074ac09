"""Speed and memory of PointINS against torchvision's Mask R-CNN (``make bench``).

    python -m benchmarks.bench                                  # CPU, the embedded recipe
    python -m benchmarks.bench --experiment none --size 800 --max-size 1333   # paper size
    python -m benchmarks.bench --device cuda --amp              # + AMP rows on a GPU

On CPU every measurement runs in a fresh process (so the peak resident set of one model
does not hide in another's; on CUDA the allocator's peak statistics are reset per
measurement instead, in one process), on the same machine, with the same backbone, FPN
width and input size, and a fixed number of detections per image (``--detections``,
100): the score thresholds are zero, so NMS and the mask branch see the same work in
every model.
Times are medians over ``--repeats`` runs after ``--warmup`` runs (CUDA: synchronised).

Rows:

* inference images/second and peak memory: PointINS-RetinaNet, PointINS-FCOS, the same
  detectors with ``mask=none`` (their difference is the mask module's cost: template
  gather, instance-aware weights, dynamic conv, mask head and paste), torchvision's Mask
  R-CNN on our backbone and FPN (``benchmarks.torchvision_baseline.build_maskrcnn``:
  width-matched) and the stock ``maskrcnn_resnet50_fpn`` built without weights;
* training seconds/iteration and peak memory at the recipe's batch size, PointINS and
  Mask R-CNN (width-matched), on one real batch of the embedded training data, and
  PointINS with ``model.detector.checkpoint_towers=true`` (memory for time);
* inference time against the number of detections (``--detection-counts``) and the
  input size (``--scales``, T11's 400 / 600 / 800);
* the training dataloader alone (default worker count), images/second;
* peak memory of the evaluation loop (predict, RLE-encode, accumulate), read after 50,
  100, 250 and 500 embedded val images of one pass: streaming evaluation keeps it flat.

``--only infer train loader eval_memory`` runs a subset of the measurements.

Peak memory, the working memory of the measured calls, model weights excluded:

* ``peak_mib`` (the tables' "peak MiB" and the ratios): the most bytes held by tensors
  during one call over what they held when it began. On CUDA the allocator's peak
  (``torch.cuda.max_memory_allocated``); on CPU the profiler's allocation events, added
  up in order (:func:`tensor_peak_mib`). This is what the computation needs, whatever the
  allocator makes of it.
* ``rss_mib`` (CPU only, "peak RSS MiB"): the process's peak resident set (``ru_maxrss``)
  over its resident set before the measured calls (:class:`PeakMemory`). It adds glibc's
  arenas and fragmentation, which move it by up to ±80 MiB between runs of the same
  code on the 2-core machine (Mask R-CNN's training step: 1073 to 1229 MiB in seven
  runs), as much as the differences between the models.

The Markdown table goes to stdout and, with the raw numbers, to ``--out``
(``outputs/bench/bench.json`` and ``bench.md``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torchvision.models.detection import maskrcnn_resnet50_fpn

from benchmarks.torchvision_baseline import (
    IdentityTransform,
    compose_config,
    rescale_predictions,
    to_torchvision_images,
    to_torchvision_targets,
)
from benchmarks.torchvision_baseline import build_model as build_torchvision
from datamodules.collate import Batch
from pointins.model import build_model
from pointins.runner import build_datamodule

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parents[1]

POINTINS = ("pointins-retinanet", "pointins-fcos")
DETECTORS = ("retinanet", "fcos")  # mask=none
MASKRCNN = "maskrcnn"  # torchvision Mask R-CNN on our backbone + FPN (width-matched)
MASKRCNN_STOCK = "maskrcnn_resnet50_fpn"  # torchvision's own R50-FPN-256, no weights
KINDS = ("infer", "train", "loader", "eval_memory")  # the measurements, for --only


# ------------------------------------------------------------------------- timing
def _peak_rss_mib() -> float:
    """Peak resident set of this process so far (Linux: KiB, macOS: bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _rss_mib() -> float:
    """Resident set now (Linux ``/proc``; elsewhere the peak so far, a lower bound of growth)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return _peak_rss_mib()
    return pages * resource.getpagesize() / (1 << 20)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Memory a block needs beyond what was allocated when it began (MiB): CUDA's peak
    allocation, or on CPU the process's peak resident set over its resident set at entry."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / (1 << 20)
        else:
            self._base = _rss_mib()
        return self

    def __exit__(self, *exc) -> None:
        self.read()

    def read(self) -> float:
        """The peak so far (also inside the block), in :attr:`mib`."""
        _sync(self.device)
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / (1 << 20) - self._base
        else:
            self.mib = _peak_rss_mib() - self._base
        return self.mib

    def held(self) -> float:
        """What is allocated (CUDA) or resident (CPU) now, beyond the start, MiB."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / (1 << 20) - self._base
        return _rss_mib() - self._base


def tensor_peak_mib(fn: Callable[[], Any], device: torch.device) -> float:
    """The most memory tensors hold during ``fn()`` over what they held when it began, MiB.

    CUDA: the caching allocator's peak statistics. CPU: one call under ``torch.profiler``
    with ``profile_memory``, whose allocation (+) and free (-) events, in time order, add
    up to the bytes held at each moment.
    """
    if device.type == "cuda":
        _sync(device)
        with PeakMemory(device) as memory:
            fn()
        return memory.mib
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == DeviceType.CPU
    )
    return max(itertools.accumulate((n for _, n in changes), initial=0)) / (1 << 20)


def measure(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict:
    """Median seconds of ``fn()`` over ``repeats`` after ``warmup`` calls, the peak memory
    (MiB) a call needs (``peak_mib``: tensors, :func:`tensor_peak_mib`, one more call; on
    CPU also ``rss_mib``, the resident set's growth over all of them) and the last
    output."""
    with PeakMemory(device) as memory:
        for _ in range(warmup):
            fn()
        _sync(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            output = fn()
            _sync(device)
            times.append(time.perf_counter() - start)
    result = {
        "seconds": statistics.median(times),
        "peak_mib": tensor_peak_mib(fn, device),
        "times": times,
        "output": output,
    }
    if device.type != "cuda":
        result["rss_mib"] = memory.mib
    return result


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
        "model.detector.score_thresh=0.0",
        f"model.detector.detections_per_img={args.detections}",
        *args.overrides,
        *extra,
    ]
    return compose_config(overrides, experiment=args.experiment)


#: config choices that make each benchmarked model
MODEL_OVERRIDES = {
    "pointins-retinanet": ["detector=retinanet"],
    "pointins-fcos": ["detector=fcos"],
    "retinanet": ["detector=retinanet", "mask=none"],
    "fcos": ["detector=fcos", "mask=none"],
}


def build(name: str, cfg: DictConfig, num_classes: int, detections: int) -> nn.Module:
    """One benchmarked model, randomly initialised, with ``detections`` per image
    (``cfg`` composed with ``MODEL_OVERRIDES[name]``)."""
    if name in MODEL_OVERRIDES:
        parts = OmegaConf.to_container(cfg.model, resolve=True)
        return build_model(
            parts["backbone"], parts["neck"], parts["detector"], parts.get("mask"), num_classes
        )
    if name == MASKRCNN:
        model = build_torchvision("maskrcnn", cfg, num_classes)
    elif name == MASKRCNN_STOCK:
        model = maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes + 1
        )
        model.transform = IdentityTransform()
    else:
        raise ValueError(f"unknown model {name!r}")
    model.roi_heads.score_thresh = 0.0
    model.roi_heads.detections_per_img = detections
    return model


def sample_batch(cfg: DictConfig, train: bool, batch_size: int) -> tuple[Batch, list[str]]:
    """One batch of the embedded data (train: with targets and augmentation)."""
    dm = build_datamodule(cfg)
    dm.setup("fit" if train else "validate")
    dataset = dm.train_dataset if train else dm.val_dataset
    samples = [dataset[i] for i in range(batch_size)]
    return dm.collate(samples), dm.class_names


def _is_torchvision(name: str) -> bool:
    return name in (MASKRCNN, MASKRCNN_STOCK)


def inference_fn(name: str, model: nn.Module, batch: Batch) -> Callable[[], list[dict]]:
    """Images in, detections with masks pasted at the original resolution out."""
    if _is_torchvision(name):
        images = to_torchvision_images(batch)

        def run() -> list[dict]:
            preds = model(images)
            return rescale_predictions(preds, batch.image_sizes, batch.orig_sizes, True)

        return run
    return lambda: model.predict(batch.images, batch.image_sizes, batch.orig_sizes)


def training_fn(name: str, model: nn.Module, batch: Batch) -> Callable[[], None]:
    """One optimiser step (AdamW) on ``batch``."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    if _is_torchvision(name):
        images = to_torchvision_images(batch)
        targets = to_torchvision_targets(batch, shift_labels=True, with_masks=True)

        def losses() -> dict[str, Tensor]:
            return model(images, targets)
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
    """One measurement, in its own process (see :func:`in_fresh_process`)."""
    logging.basicConfig(level=logging.WARNING)
    args = argparse.Namespace(**case["args"])
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kind = case["kind"]
    model_choice = MODEL_OVERRIDES.get(case.get("model", ""), [])
    detections = case.get("detections", args.detections)
    cfg = recipe(
        args,
        [
            *model_choice,
            *case.get("overrides", []),
            f"model.detector.detections_per_img={detections}",
        ],
    )
    if kind == "loader":
        dm = build_datamodule(cfg)
        dm.setup("fit")
        loader = dm.train_dataloader()
        batches = _epochs(loader)
        next(batches)  # workers started
        start, images = time.perf_counter(), 0
        for _ in range(args.loader_batches):
            images += len(next(batches))
        return {
            "images_per_second": images / (time.perf_counter() - start),
            "num_workers": loader.num_workers,
        }

    train = kind == "train"
    batch_size = int(cfg.data.batch_size) if train else args.batch_size
    batch, class_names = sample_batch(cfg, train, batch_size)
    model = build(case["model"], cfg, len(class_names), detections).to(device)
    batch = _to(batch, device)
    autocast = torch.autocast(device.type, enabled=case.get("amp", False))
    if train:
        model.train()
        step = training_fn(case["model"], model, batch)

        def autocast_step() -> None:
            with autocast:
                step()

        result = measure(autocast_step, device, args.warmup, args.train_repeats)
        del result["output"]
        result["images_per_second"] = batch_size / result["seconds"]
        return result

    model.eval()
    run = inference_fn(case["model"], model, batch)
    with torch.no_grad(), autocast:
        if kind == "eval_memory":
            return eval_memory(case, args, cfg, model, device)
        result = measure(run, device, args.warmup, args.repeats)
    counts = [len(p["scores"]) for p in result.pop("output")]
    result["images_per_second"] = len(batch) / result["seconds"]
    result["detections_per_image"] = sum(counts) / len(counts)
    return result


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
            batch = _to(batch, device)
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


def _epochs(loader: Iterable[Batch]) -> Iterator[Batch]:
    """The loader's batches, epoch after epoch (a small dataset has fewer batches than
    ``--loader-batches``; restarting the workers is part of what is timed)."""
    while True:
        yield from loader


def _to(batch: Batch, device: torch.device) -> Batch:
    return Batch(
        images=batch.images.to(device),
        image_sizes=batch.image_sizes,
        orig_sizes=batch.orig_sizes,
        image_ids=batch.image_ids,
        targets=[{k: v.to(device) for k, v in t.items()} for t in batch.targets],
    )


def in_fresh_process(case: dict[str, Any]) -> dict[str, Any]:
    """``run_case(case)`` in a new (spawned) interpreter; its peak memory is its own."""
    # an executor's workers are not daemons, so a case may start DataLoader workers
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(run_case, case).result()


def in_this_process(case: dict[str, Any]) -> dict[str, Any]:
    """``run_case(case)`` here, the CUDA caching allocator emptied first: CUDA's peak
    statistics are reset per measurement, so no case's memory hides in another's."""
    torch.cuda.empty_cache()
    return run_case(case)


def case_runner(device: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """How each case runs: on CPU the peak resident set is process-wide, so each case
    needs a fresh process; on CUDA the allocator's own statistics are exact, and one
    process saves seconds of interpreter and CUDA start-up per case."""
    return in_this_process if torch.device(device).type == "cuda" else in_fresh_process


# ------------------------------------------------------------------------ the plan
def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every measurement of one benchmark run, in order."""
    cases: list[dict[str, Any]] = []
    models = [*POINTINS, *DETECTORS, MASKRCNN]
    if not args.skip_stock:
        models.append(MASKRCNN_STOCK)
    precisions = [False, True] if args.amp else [False]
    for amp in precisions:
        cases += [{"kind": "infer", "model": m, "amp": amp} for m in models]
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
                "overrides": ["model.detector.checkpoint_towers=true"],
            }
            for m in POINTINS
        ]
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
    return [c for c in cases if not args.only or c["kind"] in args.only]


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    """The Markdown tables of one run."""

    def find(**kw) -> dict | None:
        for case, res in results:
            plain = "table" not in case and "variant" not in case
            if all(case.get(k) == v for k, v in kw.items()) and plain:
                return res
        return None

    ref = {amp: find(kind="infer", model=MASKRCNN, amp=amp) for amp in (False, True)}
    amp_dtype = "fp16" if args.device == "cuda" else "bf16"
    precision = {False: "fp32", True: f"{amp_dtype} autocast"}
    lines = [
        f"Machine: {machine()}; torch {torch.__version__}; device {args.device}; "
        f"input {args.size} (max {args.max_size}), batch {args.batch_size}, "
        f"{args.detections} detections/image; medians of {args.repeats} after {args.warmup} "
        "warm-up runs.",
    ]
    kinds = {case["kind"] for case, _ in results}
    if "infer" in kinds:
        lines += [
            "",
            "| model | precision | images/s | × Mask R-CNN | peak MiB | detections/img |",
            "|---|---|---:|---:|---:|---:|",
        ]
    for case, res in results:
        if case["kind"] != "infer" or "table" in case:
            continue
        base = ref[case.get("amp", False)]
        ratio = res["images_per_second"] / base["images_per_second"] if base else float("nan")
        lines.append(
            f"| {case['model']} | {precision[case.get('amp', False)]} "
            f"| {res['images_per_second']:.2f} | {ratio:.2f} | {res['peak_mib']:.0f} "
            f"| {res['detections_per_image']:.0f} |"
        )
    shares = []
    for det in DETECTORS:
        full, plain = (
            find(kind="infer", model=f"pointins-{det}", amp=False),
            find(kind="infer", model=det, amp=False),
        )
        if full and plain:
            share = 1 - plain["seconds"] / full["seconds"]
            shares.append(f"- PointINS-{det}: {100 * share:.1f} %")
    if shares:
        lines += ["", "Mask module share of PointINS inference (1 − t(mask=none) / t(PointINS)):"]
        lines += ["", *shares]
    rss = torch.device(args.device).type != "cuda"  # CPU rows carry the resident set too
    if "train" in kinds:
        lines += [
            "",
            "| training | precision | s/iter | × Mask R-CNN (speed) | peak MiB "
            "| × Mask R-CNN (mem) |" + (" peak RSS MiB | × Mask R-CNN (RSS) |" if rss else ""),
            "|---|---|---:|---:|---:|---:|" + ("---:|---:|" if rss else ""),
        ]
    for case, res in results:
        if case["kind"] == "train":
            amp = case.get("amp", False)
            base = find(kind="train", model=MASKRCNN, amp=amp)
            label = " + ".join([case["model"], *filter(None, [case.get("variant")])])
            lines.append(
                f"| {label} | {precision[amp]} | {res['seconds']:.3f} "
                f"| {base['seconds'] / res['seconds']:.2f} | {res['peak_mib']:.0f} "
                f"| {res['peak_mib'] / base['peak_mib']:.2f} |"
                + (
                    f" {res['rss_mib']:.0f} | {res['rss_mib'] / base['rss_mib']:.2f} |"
                    if rss
                    else ""
                )
            )
    for table, key, label in (
        ("detections", "detections", "detections/img"),
        ("scales", "scale", "input size"),
    ):
        values = sorted({c[key] for c, _ in results if c.get("table") == table})
        if not values:
            continue
        models = [m for m in (*POINTINS, MASKRCNN)]
        lines += [
            "",
            f"| ms/image vs {label} | " + " | ".join(map(str, values)) + " |",
            "|---|" + "---:|" * len(values),
        ]
        for m in models:
            cells = []
            for v in values:
                res = next(
                    (
                        r
                        for c, r in results
                        if c.get("table") == table and c["model"] == m and c[key] == v
                    ),
                    None,
                )
                cells.append(f"{1000 / res['images_per_second']:.0f}" if res else "–")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    loader = find(kind="loader")
    train_fcos = find(kind="train", model="pointins-fcos", amp=False)
    if loader and train_fcos:
        lines += [
            "",
            f"Training dataloader alone ({loader['num_workers']} workers): "
            f"{loader['images_per_second']:.1f} images/s; PointINS-FCOS training step: "
            f"{train_fcos['images_per_second']:.1f} images/s.",
        ]
    for case, res in results:
        if case["kind"] == "eval_memory":
            lines += [
                "",
                "Evaluation loop peak memory, read during one pass over the val split:",
                "",
                "| images | held MiB | peak MiB | largest image so far |",
                "|---:|---:|---:|---|",
            ]
            lines += [
                f"| {r['images']} | {r['held_mib']:.0f} | {r['peak_mib']:.0f} "
                f"| {r['largest_original'][0]}×{r['largest_original'][1]} |"
                for r in res["readings"]
            ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="shapes", help="experiment config ('none': paper)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=320, help="shorter side of the input")
    p.add_argument("--max-size", type=int, default=576, help="longest side of the input")
    p.add_argument("--batch-size", type=int, default=1, help="images per inference call")
    p.add_argument("--detections", type=int, default=100)
    p.add_argument("--detection-counts", type=int, nargs="*", default=[10, 50, 100])
    p.add_argument("--scales", type=int, nargs="*", default=[400, 600, 800])
    p.add_argument(
        "--eval-images",
        type=int,
        nargs="+",
        default=[50, 100, 250, 500],
        help="read the evaluation loop's peak memory after these many val images",
    )
    p.add_argument("--eval-data", default=str(ROOT / "outputs" / "bench" / "shapes_eval"))
    p.add_argument("--loader-batches", type=int, default=50)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--train-repeats", type=int, default=5)
    p.add_argument("--amp", action="store_true", help="also autocast (CUDA fp16, CPU bf16)")
    p.add_argument("--skip-stock", action="store_true", help="no maskrcnn_resnet50_fpn row")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    p.add_argument(
        "--only",
        nargs="+",
        choices=KINDS,
        help="run only these kinds of measurement (default: all)",
    )
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench"))
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the recipe")
    args = p.parse_intermixed_args(argv)  # Hydra overrides may follow options
    if args.experiment == "none":
        args.experiment = None
    return args


def main(argv: Sequence[str] | None = None) -> list:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    # the CPU memory readings start torch.profiler; its kineto backend otherwise logs an
    # ERROR line per case on a machine without a GPU ("gpuGetDeviceCount failed")
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    results = []
    cases = plan(args)
    run = case_runner(args.device)
    for i, case in enumerate(cases, 1):
        case = {**case, "args": vars(args)}
        result = run(case)
        shown = {k: round(v, 3) for k, v in result.items() if isinstance(v, float)}
        log.info(
            "[%d/%d] %s %s",
            i,
            len(cases),
            " ".join(
                f"{k}={case[k]}"
                for k in ("kind", "model", "amp", "detections", "scale", "checkpoints")
                if k in case
            ),
            shown,
        )
        results.append(({k: v for k, v in case.items() if k != "args"}, result))
    table = report(args, results)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(table + "\n")
    (out / "bench.json").write_text(
        json.dumps(
            {
                "machine": machine(),
                "args": vars(args),
                "results": [{"case": c, "result": r} for c, r in results],
            },
            indent=1,
        )
    )
    log.info("wrote %s and %s", out / "bench.md", out / "bench.json")
    return results


if __name__ == "__main__":
    main()
