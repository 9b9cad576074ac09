"""``torch.profiler`` tables of one benchmarked model: a training step or an inference call.

    python -m benchmarks.profile_step --model pointins-retinanet --train \
        --device cuda --experiment none --size 800 --max-size 1333 \
        data=shapes data.batch_size=2 model.backbone.norm=frozen_bn

prints the step time and peak memory (as ``make bench`` measures them); the time of each
of PointINS's stages per call (:data:`STAGES`: backbone, FPN, towers, assignment, detector
losses, query sampling, mask targets, the mask module's template read, instance-aware
weights, dynamic conv and mask head, mask loss, post-processing, paste; and for a training
step the backward pass and the optimiser), with the time one batch takes to load and
collate in the main process (what each dataloader worker spends per batch, on the same
cores); then the ops by total device time (CPU time on the CPU) with the stages labelled
``pi::...``, the ops by self CPU time, and the calls that make the host wait for the GPU
(``cudaStreamSynchronize``, ``nonzero``...). Models, sizes and overrides are those of
``benchmarks.bench`` (:mod:`benchmarks.cases`). Stage times are read under the profiler,
which adds a little to every op: compare their shares, and the step time above.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import time
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
#: (attribute path, method) of a PointINS model labelled ``pi::<Class>.<method>``
_METHODS = (
    ("", "features"),
    ("detector", "forward"),
    ("detector", "forward_train"),
    ("detector", "loss"),
    ("detector", "mask_anchor_condition"),
    ("detector", "postprocess"),
    ("mask", "forward"),
)
#: parts of a PointINS model labelled ``pi::<path>``: a module's forward, a callable object
#: (the detector's loss, post-processing and the mask module carry their method labels)
_PARTS = (
    "backbone",
    "neck",
    "detector.head",
    "detector.assigner",
    "mask.template_branch",
    "mask.weight_branch",
    "mask.fusion",
    "mask.head",
)
#: the per-stage table: (stage, its label, nested in the stage above)
STAGES = (
    ("backbone", "pi::backbone", False),
    ("FPN", "pi::neck", False),
    ("towers (detector head)", "pi::detector.head", False),
    ("assignment", "pi::detector.assigner", False),
    ("detector losses", "pi::DenseDetector.loss", False),
    ("query sampling", "pi::sample_queries", False),
    ("mask targets", "pi::mask_targets", False),
    ("mask module", "pi::InstanceAwareMask.forward", False),
    ("template read", "pi::mask.template_branch", True),
    ("instance-aware weights", "pi::mask.weight_branch", True),
    ("dynamic conv", "pi::mask.fusion", True),
    ("mask head", "pi::mask.head", True),
    ("mask loss", "pi::mask_loss", False),
    ("post-processing", "pi::DenseDetector.postprocess", False),
    ("paste", "pi::paste_masks", False),
    ("backward", "autograd::engine::evaluate_function", False),
    ("optimiser", "Optimizer.step", False),
)
#: profiler keys of the calls that wait for the device (or read a device value back)
SYNC_KEYS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::nonzero", "aten::item")


class _Labelled:
    """A callable object (an assigner, a loss) run inside a ``record_function(label)``
    range; its other attributes are the object's."""

    def __init__(self, fn: object, label: str) -> None:
        self._fn, self._label = fn, label

    def __call__(self, *args, **kwargs):
        with record_function(self._label):
            return self._fn(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._fn, name)


def _labelled(fn, label: str):
    @functools.wraps(fn)
    def labelled(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)

    return labelled


@contextlib.contextmanager
def labelled_stages(model: nn.Module) -> Iterator[None]:
    """Label PointINS's stages while the block runs (a torchvision model has none): the
    functions of :data:`_FUNCTIONS` as ``pi::<name>``, the methods of :data:`_METHODS` as
    ``pi::<Class>.<method>`` and the parts of :data:`_PARTS` as ``pi::<path>`` (a module's
    ``forward``, a callable part as a whole)."""
    undo = []

    def swap(owner: object, name: str, value: object) -> None:
        undo.append((owner, name, vars(owner).get(name), name in vars(owner)))
        # on a module, past nn.Module.__setattr__: a part swapped is not registered again
        (object.__setattr__ if isinstance(owner, nn.Module) else setattr)(owner, name, value)

    for module, name in _FUNCTIONS:
        swap(module, name, _labelled(getattr(module, name), f"pi::{name}"))
    if hasattr(model, "detector"):
        for path, name in _METHODS:
            owner = _part(model, path)
            if owner is not None and hasattr(owner, name):
                label = f"pi::{type(owner).__name__}.{name}"
                swap(owner, name, _labelled(getattr(owner, name), label))
        for path in _PARTS:
            part = _part(model, path)
            if isinstance(part, nn.Module):
                swap(part, "forward", _labelled(part.forward, f"pi::{path}"))
            elif part is not None:
                parent, _, name = path.rpartition(".")
                swap(_part(model, parent), name, _Labelled(part, f"pi::{path}"))
    try:
        yield
    finally:
        for owner, name, value, had in reversed(undo):
            if had:
                (object.__setattr__ if isinstance(owner, nn.Module) else setattr)(
                    owner, name, value
                )
            else:
                (object.__delattr__ if isinstance(owner, nn.Module) else delattr)(owner, name)


def _part(model: nn.Module, path: str) -> object | None:
    """``model.<path>`` (``""``: the model), or None where a link is missing."""
    part: object | None = model
    for name in filter(None, path.split(".")):
        part = getattr(part, name, None)
    return part


def stage_table(events, steps: int, step_seconds: float, data_seconds: float | None) -> str:
    """Milliseconds per call of each of :data:`STAGES` that ran (nested ones indented),
    with its share of the measured call; a stage's time includes what it calls."""
    totals: dict[str, float] = {}
    for event in events:
        for _, label, _ in STAGES:
            # "Optimizer.step#AdamW.step", "autograd::engine::evaluate_function: XBackward0"
            if event.key == label or event.key.startswith((label + "#", label + ":")):
                totals[label] = totals.get(label, 0.0) + event.cpu_time_total / 1000 / steps
    lines = ["| stage | ms per call | share |", "|---|---:|---:|"]
    for stage, label, nested in STAGES:
        if label in totals:
            name = f"&nbsp;&nbsp;{stage}" if nested else stage
            share = totals[label] / (1000 * step_seconds)
            lines.append(f"| {name} | {totals[label]:.1f} | {100 * share:.0f} % |")
    lines.append(f"| the call, measured without the profiler | {1000 * step_seconds:.1f} | |")
    if data_seconds is not None:
        lines.append(
            f"| loading and collating its batch (main process) | {1000 * data_seconds:.1f} | "
            f"{100 * data_seconds / step_seconds:.0f} % |"
        )
    return "\n".join(lines)


def data_seconds(cfg, train: bool, batch_size: int, repeats: int = 3) -> float:
    """Median seconds to read, augment and collate one batch in this process (the
    datamodule built once, as a loader's)."""
    read, _ = cases.batch_reader(cfg, train)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        read(batch_size)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    loading = data_seconds(cfg, own.train, batch_size) if hasattr(model, "detector") else None
    lines = [
        f"per stage, {own.steps} profiled calls:",
        stage_table(events, own.steps, timing["seconds"], loading),
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
