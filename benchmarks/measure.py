"""Timing and memory primitives of the benchmarks (``benchmarks.bench``, ``profile_step``).

Peak memory, the working memory of the measured calls, model weights excluded:

* ``peak_mib``: the most bytes held by tensors during one call over what they held when it
  began. On CUDA the allocator's peak (``torch.cuda.max_memory_allocated``); on CPU the
  profiler's allocation events, added up in order (:func:`tensor_peak_mib`). This is what
  the computation needs, whatever the allocator makes of it.
* ``rss_mib`` (CPU only): the process's peak resident set (``ru_maxrss``) over its resident
  set before the measured calls (:class:`PeakMemory`). It adds glibc's arenas and
  fragmentation, which move it between runs of the same code by as much as the
  differences between the models.

On CPU the peak resident set is process-wide, so each measurement runs in a fresh process
(:func:`in_fresh_process`); on CUDA the allocator's peak statistics are reset per
measurement instead, in one process (:func:`in_this_process`).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from pointins.structures import Batch

T = TypeVar("T")


def peak_rss_mib() -> float:
    """Peak resident set of this process so far (Linux: KiB, macOS: bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def rss_mib() -> float:
    """Resident set now (Linux ``/proc``; elsewhere the peak so far, a lower bound of growth)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return peak_rss_mib()
    return pages * resource.getpagesize() / (1 << 20)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
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
            self._base = rss_mib()
        return self

    def __exit__(self, *exc) -> None:
        self.read()

    def read(self) -> float:
        """The peak so far (also inside the block), in :attr:`mib`."""
        sync(self.device)
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / (1 << 20) - self._base
        else:
            self.mib = peak_rss_mib() - self._base
        return self.mib

    def held(self) -> float:
        """What is allocated (CUDA) or resident (CPU) now, beyond the start, MiB."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / (1 << 20) - self._base
        return rss_mib() - self._base


def tensor_peak_mib(fn: Callable[[], Any], device: torch.device) -> float:
    """The most memory tensors hold during ``fn()`` over what they held when it began, MiB.

    CUDA: the caching allocator's peak statistics. CPU: one call under ``torch.profiler``
    with ``profile_memory``, whose allocation (+) and free (-) events, in time order, add
    up to the bytes held at each moment; the free of a block allocated before the call is
    left out (the profiler knows that block's size when an earlier profiler run in this
    process saw it allocated).
    """
    if device.type == "cuda":
        sync(device)
        with PeakMemory(device) as memory:
            fn()
        return memory.mib
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (node.start_time_ns, node.extra_fields.ptr, node.extra_fields.alloc_size)
        for node in _walk(prof.profiler.kineto_results.experimental_event_tree())
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu"
    )
    live: set[int] = set()
    changes = []
    for _, ptr, size in events:
        if size > 0:
            live.add(ptr)
            changes.append(size)
        elif ptr in live:  # a block allocated before the call gives no credit when freed
            live.discard(ptr)
            changes.append(size)
    return max(itertools.accumulate(changes, initial=0)) / (1 << 20)


def _walk(nodes: Iterable[Any]) -> Iterator[Any]:
    """Every node of the profiler's event tree, depth first."""
    for node in nodes:
        yield node
        yield from _walk(node.children)


def measure(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict:
    """Median seconds of ``fn()`` over ``repeats`` after ``warmup`` calls, the peak memory
    (MiB) a call needs (``peak_mib``: tensors, :func:`tensor_peak_mib`, one more call; on
    CPU also ``rss_mib``, the resident set's growth over all of them) and the last
    output."""
    with PeakMemory(device) as memory:
        for _ in range(warmup):
            fn()
        sync(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            output = fn()
            sync(device)
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


def epochs(loader: Iterable[T]) -> Iterator[T]:
    """The loader's batches, epoch after epoch (a small dataset has fewer batches than a
    measurement reads; restarting the workers is part of what is timed)."""
    while True:
        yield from loader


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch's images and targets on ``device``."""
    return Batch(
        images=batch.images.to(device),
        image_sizes=batch.image_sizes,
        orig_sizes=batch.orig_sizes,
        image_ids=batch.image_ids,
        targets=[{k: v.to(device) for k, v in t.items()} for t in batch.targets],
    )


# ------------------------------------------------------------ process isolation
def in_fresh_process(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a new (spawned) interpreter; its peak memory is its own. ``fn``
    must be importable by name (a module-level function)."""
    # an executor's workers are not daemons, so ``fn`` may start DataLoader workers
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def in_this_process(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` here, the CUDA caching allocator emptied first: CUDA's peak
    statistics are reset per measurement, so no measurement's memory hides in another's."""
    torch.cuda.empty_cache()
    return fn(*args)


def case_runner(device: str) -> Callable[..., Any]:
    """How each measurement runs: on CPU the peak resident set is process-wide, so each
    needs a fresh process; on CUDA the allocator's own statistics are exact, and one
    process saves seconds of interpreter and CUDA start-up per measurement."""
    return in_this_process if torch.device(device).type == "cuda" else in_fresh_process
