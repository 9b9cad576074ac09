"""Every GPU row of ``docs/benchmarks.md`` in one process (``make bench-gpu``).

    python -m benchmarks.gpu                          # one GPU, the paper's size
    python -m benchmarks.gpu --tiny --device cpu      # every section at a tiny size (the test)

The paper's models (``--experiment none``: ResNet-50, FPN and towers 256 wide, frozen
BatchNorm) on the embedded scenes at 800×1333, random weights, against torchvision's
standard Mask R-CNN (:func:`pointins.baselines.build_maskrcnn` on the same body and FPN
width, and the stock ``maskrcnn_resnet50_fpn``). The sections, in order:

1. inference at batch 1, fp32 and fp16 autocast, with the mask module's share
   (PointINS against the same detector with ``mask=none``) for both template reads;
2. training step and peak memory at batch 2 against Mask R-CNN doing real RoI work
   (:mod:`benchmarks.roi_work`), fp32 and fp16 autocast;
3. inference at batch 8;
4. training at batch 8;
5. training PointINS-FCOS for ``--compile-batches`` steps of the multi-scale loader, eager
   and ``torch.compile``d with ``data.size_buckets`` (every side padded to 832 or 1344: the
   paper's shorter sides 640–800 and longer sides up to 1333 make one or two shapes).

Each section is :func:`benchmarks.cases.plan`'s cases for the section's options, measured in
this process with the allocator's peak statistics reset per case
(:func:`benchmarks.measure.in_this_process`), and reported by
:func:`benchmarks.report.report`. The Markdown and the JSON (machine, commit, every case's
numbers) are rewritten after every case, so a run cut short leaves what it measured; a
section that would start after ``--budget-s`` seconds is listed as not run.
``--tiny`` runs the sections at 96×128 with the embedded recipe's small models (batch 2
for the larger batch, whose training section it leaves out: the same cases as at batch 2),
one repeat, without the stock model and the variants, autocast at batch 1 only, and with
dynamo's ``eager`` backend (no code generation): the script end to end on a CPU in a
minute, so that the first GPU run is the real one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import bench
from benchmarks.cases import plan, run_case
from benchmarks.measure import in_this_process
from benchmarks.report import commit, machine, report

log = logging.getLogger("bench-gpu")

ROOT = Path(__file__).resolve().parents[1]

#: bench options of every section: the paper's models at the paper's size
PAPER = [
    "--experiment", "none", "--size", "800", "--max-size", "1333",
    "--detection-counts", "--scales", "--amp",
]  # fmt: skip
PAPER_OVERRIDES = ["data=shapes", "model.backbone.norm=frozen_bn", "data.num_workers=4"]
#: the same sections at a tiny size, on the embedded recipe's small models
TINY = [
    "--experiment", "shapes", "--size", "96", "--max-size", "128", "--detections", "20",
    "--detection-counts", "--scales", "--amp", "--warmup", "0", "--repeats", "1",
    "--train-repeats", "1", "--compile-batches", "2", "--size-buckets", "128",
]  # fmt: skip
TINY_OVERRIDES = [
    "data.num_workers=0", "data.train_scales=[64,96]", "data.num_train=8", "data.num_val=4",
]  # fmt: skip
INFER_MODELS = ["pointins-fcos", "pointins-retinanet", "fcos", "retinanet", "maskrcnn"]
#: torchvision's own R50-FPN-256: on the GPU only (bf16 on a CPU without it takes minutes)
STOCK = "maskrcnn_resnet50_fpn"
TRAIN_MODELS = ["pointins-fcos", "pointins-retinanet", "maskrcnn"]


def sections(tiny: bool) -> list[tuple[str, list[str], list[str]]]:
    """(title, bench options, Hydra overrides) of each section, in the order they run."""
    big = 2 if tiny else 8
    infer = ["--only", "infer", "--models", *INFER_MODELS, *([] if tiny else [STOCK])]
    train = ["--only", "train", "--models", *TRAIN_MODELS]
    compiled = ["--only", "compile"] + ([] if tiny else ["--size-buckets", "832", "1344"])
    return [
        ("Inference, batch 1", [*infer, "--batch-size", "1"], []),
        ("Training, batch 2", train, ["data.batch_size=2"]),
        (f"Inference, batch {big}", [*infer, "--batch-size", str(big)], []),
        *([] if tiny else [(f"Training, batch {big}", train, [f"data.batch_size={big}"])]),
        ("Training PointINS-FCOS eager and compiled", compiled, ["data.batch_size=2"]),
    ]


def bench_args(tiny: bool, options: Sequence[str], overrides: Sequence[str], *extra: str):
    """``benchmarks.bench``'s arguments of a section (the Hydra overrides first: an option
    that takes several values would take the overrides after it as its own)."""
    base, base_overrides = (TINY, TINY_OVERRIDES) if tiny else (PAPER, PAPER_OVERRIDES)
    return bench.parse_args([*base_overrides, *overrides, *base, *options, *extra])


def section_cases(args: argparse.Namespace, tiny: bool) -> list[dict[str, Any]]:
    """The section's cases: no onnxruntime row (a CPU row); of the compile runs, eager and
    compiled with size buckets (the unbucketed one compiles a graph per input shape:
    minutes the GPU run does not have)."""
    cases = [c for c in plan(args) if c.get("variant") not in ("compile", "onnxruntime")]
    big = args.batch_size > 1
    if tiny:
        # every section and kind, without the variants (make bench's own cases), autocast
        # at batch 1 only (bf16 kernels on a CPU without them are slow); graph capture
        # without code generation: seconds on a CPU
        cases = [
            {**c, "compile_options": {"backend": "eager"}} if c.get("compile") else c
            for c in cases
            if c["kind"] == "compile"
            or ("variant" not in c and not (c["amp"] and (c["kind"] == "train" or big)))
        ]
    return cases


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="the sections at a tiny size (the test)")
    p.add_argument("--budget-s", type=float, default=480, help="start no section after this")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_gpu")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of every section's recipe")
    args = p.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no GPU here (run with --device cpu --tiny to test)")
    return args


def write(out: Path, head: dict[str, Any], done: list[dict[str, Any]], skipped: list[str]) -> str:
    """Rewrite ``bench_gpu.md`` and ``bench_gpu.json`` with the sections measured so far."""
    lines = [
        f"Machine: {head['machine']}; torch {torch.__version__}; commit {head['commit']}; "
        f"command `{head['command']}`.",
    ]
    for section in done:
        lines += ["", f"### {section['title']}", "", section["table"]]
    if skipped:
        lines += ["", f"Not run (over the {head['budget_s']:.0f} s budget): {', '.join(skipped)}."]
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gpu.md").write_text(table)
    (out / "bench_gpu.json").write_text(json.dumps({**head, "sections": done}, indent=1))
    return table


def main(argv: Sequence[str] | None = None) -> str:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    own = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # as make bench: no profiler chatter
    start = time.perf_counter()
    head = {
        "machine": machine() if own.device != "cpu" else f"CPU ({machine()})",
        "commit": commit(),
        "command": " ".join(["python -m benchmarks.gpu", *argv]),
        "budget_s": own.budget_s,
    }
    done: list[dict[str, Any]] = []
    skipped: list[str] = []
    for title, options, overrides in sections(own.tiny):
        if time.perf_counter() - start > own.budget_s:
            skipped.append(title)
            continue
        extra = ["--device", own.device, "--out", str(own.out)]
        args = bench_args(own.tiny, options, [*overrides, *own.overrides], *extra)
        section = {"title": title, "args": vars(args), "results": []}
        done.append(section)
        results = []
        for case in section_cases(args, own.tiny):
            result = in_this_process(run_case, {**case, "args": vars(args)})
            results.append((case, result))
            section["results"].append({"case": case, "result": result})
            section["table"] = report(args, results)
            write(own.out, head, done, skipped)
            log.info("%s: %s (%.0f s)", title, case.get("model") or case.get("variant"),
                     time.perf_counter() - start)  # fmt: skip
    head["seconds"] = time.perf_counter() - start
    table = write(own.out, head, done, skipped)
    print(table)
    log.info("wrote %s and %s in %.0f s", own.out / "bench_gpu.md", own.out / "bench_gpu.json",
             head["seconds"])  # fmt: skip
    return table


if __name__ == "__main__":
    main()
