"""Dataloader workers where the machine has cores to spare.

``data.num_workers: ${spare_core_workers:2}`` (the CPU recipe, ``experiment=shapes``)
resolves to 2 where the process may run on more than two CPUs, and to 0 on two or fewer:
there the workers' processes take the cores from the training step's own threads, and
loading each batch in the main process between steps is the faster of the two (``make
train``'s step, docs/benchmarks.md). The batches are the same either way: sampling and
augmentation are seeded per sample.
"""

from __future__ import annotations

import functools
import logging
import os

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

#: CPUs at or below which loading runs in the main process
FEW_CPUS = 2


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def spare_core_workers(workers: int | str) -> int:
    """``workers`` where more than :data:`FEW_CPUS` CPUs are usable, else 0."""
    cpus = usable_cpus()
    chosen = int(workers) if cpus > FEW_CPUS else 0
    _announce(str(workers), chosen, cpus)
    return chosen


@functools.cache
def _announce(workers: str, chosen: int, cpus: int) -> None:
    """Log a resolution once: OmegaConf resolves the key at every read of it."""
    log.info("${spare_core_workers:%s} resolved to %d (%d CPUs)", workers, chosen, cpus)


OmegaConf.register_new_resolver("spare_core_workers", spare_core_workers, replace=True)
