"""Speed and memory of PointINS against torchvision's Mask R-CNN (``make bench``).

    python -m benchmarks.bench                                  # CPU, the embedded recipe
    python -m benchmarks.bench --experiment none --size 800 --max-size 1333   # paper size
    python -m benchmarks.bench --device cuda --amp              # + AMP rows on a GPU

The command line of the benchmark: the cases measured are :mod:`benchmarks.cases`'s (which
models, configs and sizes), the timing and memory primitives :mod:`benchmarks.measure`'s
(on CPU every measurement runs in a fresh process, on CUDA in this one with the
allocator's peak statistics reset), the tables :mod:`benchmarks.report`'s. Times are
medians over ``--repeats`` runs after ``--warmup`` runs (CUDA: synchronised).
``--only infer train loader eval_memory`` runs a subset of the measurements; ``--compile``
adds the training runs of ``model.compile=true`` with and without ``data.size_buckets``.

The Markdown table goes to stdout and, with the raw numbers, to ``--out``
(``outputs/bench/bench.json`` and ``bench.md``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.cases import KINDS, plan, run_case
from benchmarks.measure import case_runner, tensor_peak_mib
from benchmarks.report import machine, report

__all__ = ["main", "parse_args", "tensor_peak_mib"]  # tensor_peak_mib: tests import it here

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parents[1]


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
    p.add_argument("--models", nargs="*", help="only the cases of these models (e.g. maskrcnn)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also train eager / compiled / compiled with --size-buckets (minutes on a CPU)",
    )
    p.add_argument("--compile-batches", type=int, default=16, help="training steps per case")
    p.add_argument(
        "--size-buckets", type=int, nargs="*", default=[352, 448, 576],
        help="data.size_buckets of the bucketed compile case (the demo's sizes)",
    )  # fmt: skip
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
        result = run(run_case, case)
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
