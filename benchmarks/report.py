"""The Markdown tables of one ``make bench`` run (``benchmarks.bench``).

Tables: inference images/second and peak memory against Mask R-CNN; the mask module's
share of PointINS inference; training seconds/iteration and peak memory (on CPU also the
peak resident set) against Mask R-CNN; milliseconds per image against the number of
detections and the input size; the training dataloader alone; the evaluation loop's
memory. Only the kinds of measurement that ran are reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from benchmarks.cases import DETECTORS, MASKRCNN, POINTINS, recipe

_ISA = (("amx_tile", "AMX"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"),
        ("avx2", "AVX2"))  # fmt: skip


#: the ratios of a row whose Mask R-CNN row is not (yet) measured: nan
NO_BASELINE = {"seconds": float("nan"), "peak_mib": float("nan"), "rss_mib": float("nan")}


def cpu_name() -> str:
    """The CPU as a reader compares machines: model, cores and the ISA that decides bf16
    speed, e.g. ``AMD EPYC, 2 cores, AVX512-BF16`` or ``Intel Xeon ..., 2 cores, AMX``."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine()):
                model = " ".join(value.split())
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    isa = next(
        (name for flag, name in _ISA if flag in flags), None
    )  # the widest matrix/vector unit
    return ", ".join(filter(None, (model, f"{os.cpu_count()} cores", isa)))


def commit() -> str:
    """``git describe``-like: the HEAD commit, ``+dirty`` with uncommitted changes to tracked
    files."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip()
    dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    return (head or "unknown") + ("+dirty" if dirty else "")


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def roi_counts(res: dict[str, Any]) -> str:
    """``mask RoIs per image (sampled RoIs per image)`` of a training row, or ``–``."""
    masks = res.get("mask_rois_per_image")
    if not masks:
        return "–"
    sampled = res.get("sampled_rois_per_image")
    text = " / ".join(map(str, masks))
    return text + (f" ({' / '.join(map(str, sampled))})" if sampled else "")


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
        label = " + ".join([case["model"], *filter(None, [case.get("variant")])])
        lines.append(
            f"| {label} | {precision[case.get('amp', False)]} "
            f"| {res['images_per_second']:.2f} | {ratio:.2f} | {res['peak_mib']:.0f} "
            f"| {res['detections_per_image']:.0f} |"
        )
    shares = []
    recipe_read = f"{recipe(args).model.mask.template_from} templates"
    for amp in (False, True):
        for det in DETECTORS:
            plain = find(kind="infer", model=det, amp=amp)
            full = [(recipe_read, find(kind="infer", model=f"pointins-{det}", amp=amp))]
            full += [
                (case["variant"], res)
                for case, res in results
                if case["kind"] == "infer"
                and case.get("model") == f"pointins-{det}"
                and case.get("amp", False) == amp
                and case.get("variant", "").endswith(" templates")
                and "table" not in case
            ]
            shares += [
                f"- PointINS-{det}, {read}, {precision[amp]}: "
                f"{100 * (1 - plain['seconds'] / res['seconds']):.1f} %"
                for read, res in full
                if plain and res
            ]
    if shares:
        lines += ["", "Mask module share of PointINS inference (1 − t(mask=none) / t(PointINS)):"]
        lines += ["", *shares]
    rss = torch.device(args.device).type != "cuda"  # CPU rows carry the resident set too
    if "train" in kinds:
        lines += [
            "",
            "| training | precision | s/iter | × Mask R-CNN (speed) | peak MiB "
            "| × Mask R-CNN (mem) |"
            + (" peak RSS MiB | × Mask R-CNN (RSS) |" if rss else "")
            + " mask RoIs / image (sampled RoIs) |",
            "|---|---|---:|---:|---:|---:|" + ("---:|---:|" if rss else "") + "---|",
        ]
    for case, res in results:
        if case["kind"] == "train":
            amp = case.get("amp", False)
            base = find(kind="train", model=MASKRCNN, amp=amp) or NO_BASELINE
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
                + f" {roi_counts(res)} |"
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
    compiled = [(c, r) for c, r in results if c["kind"] == "compile"]
    if compiled:
        lines += [
            "",
            f"Training PointINS-FCOS on the first {args.compile_batches} batches of the "
            "training loader:",
            "",
            "| run | input shapes | graphs compiled | total s | s/iter once compiled |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {c['variant']} | {r['shapes']} | {r['graphs']} | {r['total_seconds']:.0f} "
            f"| {r['steady_seconds']:.3f} |"
            for c, r in compiled
        ]
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
