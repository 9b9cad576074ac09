"""``torch.profiler`` tables of one benchmarked model: a training step or an inference call.

    python -m benchmarks.profile_step --model pointins-retinanet --train \
        --device cuda --experiment none --size 800 --max-size 1333 \
        data=shapes data.batch_size=2 model.backbone.norm=frozen_bn

prints the step time and peak memory (as ``make bench`` measures them), then the ops by
total device time (CPU time on the CPU) with PointINS's stages labelled ``pi::...``
(backbone + FPN, detector head, assignment, losses, sampling, mask module, mask targets,
paste), the ops by self CPU time, and the calls that make the host wait for the GPU
(``cudaStreamSynchronize``, ``nonzero``...). Models, sizes and overrides are those of
``benchmarks.bench`` (:mod:`benchmarks.cases`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

import pointins.mask.sampling as sampling_module
import pointins.model as pointins_model
from benchmarks import bench, cases, measure

#: (module, function) pairs labelled in the tables, where the caller looks them up
_FUNCTIONS = (
    (sampling_module, "sample_queries"),
    (sampling_module, "mask_targets"),
    (pointins_model, "mask_loss"),
    (pointins_model, "paste_masks"),
)
#: (attribute path, method or call-only part) of a PointINS model labelled in the tables
_METHODS = (
    ("", "features"),
    ("detector", "forward"),
    ("detector", "forward_train"),
    ("detector", "loss"),
    ("detector", "mask_anchor_condition"),
    ("detector", "postprocess"),
    ("mask", "forward"),
)
#: profiler keys of the calls that wait for the device (or read a device value back)
SYNC_KEYS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::nonzero", "aten::item")


def _label(owner: object, name: str, label: str) -> None:
    """Wrap ``owner.name`` in a ``record_function(label)`` range."""
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def labelled(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)

    setattr(owner, name, labelled)


@contextlib.contextmanager
def labelled_stages(model: nn.Module) -> Iterator[None]:
    """Label PointINS's stages while the block runs (a torchvision model has none)."""
    originals = [(module, name, getattr(module, name)) for module, name in _FUNCTIONS]
    for module, name in _FUNCTIONS:
        _label(module, name, f"pi::{name}")
    if hasattr(model, "detector"):
        for path, method in _METHODS:
            owner = getattr(model, path) if path else model
            if owner is not None and hasattr(owner, method):
                _label(owner, method, f"pi::{type(owner).__name__}.{method}")
    try:
        yield
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pointins-retinanet", help="a benchmarked model")
    parser.add_argument("--train", action="store_true", help="a training step (else inference)")
    parser.add_argument("--steps", type=int, default=2, help="profiled calls")
    parser.add_argument("--rows", type=int, default=30, help="rows of the device-time table")
    own, rest = parser.parse_known_args(argv)
    return own, rest


def main(argv: Sequence[str] | None = None) -> str:
    own, rest = parse_args(argv)
    args = bench.parse_args(rest)
    device = torch.device(args.device)
    cfg = cases.recipe(args, cases.MODEL_OVERRIDES.get(own.model, []))
    batch_size = int(cfg.data.batch_size) if own.train else args.batch_size
    batch, class_names = cases.sample_batch(cfg, own.train, batch_size)
    torch.manual_seed(0)
    model = cases.build(own.model, cfg, len(class_names), args.detections).to(device)
    model.train(own.train)
    batch = measure.to_device(batch, device)
    call = (
        cases.training_fn(own.model, model, batch)
        if own.train
        else cases.inference_fn(own.model, model, batch)
    )
    autocast = torch.autocast(device.type, enabled=args.amp)

    def run() -> None:
        with autocast, torch.set_grad_enabled(own.train):
            call()

    timing = measure.measure(run, device, args.warmup, args.repeats)
    what = "training step" if own.train else "inference call"
    print(
        f"{own.model}, {what}, batch {batch_size}, {'autocast' if args.amp else 'fp32'}: "
        f"{1000 * timing['seconds']:.1f} ms (median of {args.repeats}), "
        f"peak {timing['peak_mib']:.0f} MiB"
    )
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with labelled_stages(model), profile(activities=activities) as prof:
        for _ in range(own.steps):
            run()
        measure.sync(device)
    events = prof.key_averages()
    key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    lines = [
        f"{own.steps} calls, by {key}:",
        events.table(sort_by=key, row_limit=own.rows, max_name_column_width=60),
        "by self CPU time:",
        events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60),
        "calls that wait for the device (or read a value back), per call:",
        *(
            f"  {event.key}: {event.count / own.steps:g}"
            for event in events
            if event.key in SYNC_KEYS or "Synchronize" in event.key
        ),
    ]
    print("\n".join(lines))
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
