"""Where a training run starts: its run folder's newest checkpoint, a given checkpoint, or
from scratch (``resume`` and ``ckpt_path`` in conf/train.yaml).

With ``resume=auto`` a run whose folder (``hydra.run.dir``) holds a checkpoint continues
from the newest one: ``checkpoints/last.ckpt`` (written every epoch and every
``callbacks.last_checkpoint.every_n_train_steps`` steps) or a ``hpc_ckpt_*.ckpt`` that
Lightning's SLURM requeue wrote. Weights, optimiser, schedule, step and the position in
the epoch come back with it. Without one, ``ckpt_path`` (if set) is the start, else the
run starts from scratch. ``resume=false`` never reads the run folder's checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"  # relative to the run folder


@dataclass(frozen=True)
class Start:
    """How :func:`plan_start` decided a run begins."""

    ckpt_path: str | None  # what Trainer.fit restores, None for a fresh start
    continues_run: bool  # the run folder's own checkpoint: the same run (and W&B run) goes on


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    """The run folder's most recently written checkpoint to continue from, if any."""
    run_dir = Path(run_dir)
    candidates = [run_dir / LAST_CHECKPOINT, *run_dir.glob("hpc_ckpt_*.ckpt")]
    existing = [path for path in candidates if path.is_file()]
    return max(existing, key=lambda path: path.stat().st_mtime, default=None)


def read_position(path: str | Path, option: str) -> tuple[int, int]:
    """``(epoch, global step)`` stored in a Lightning checkpoint (memory-mapped: the
    tensors are not read)."""
    try:
        saved: dict[str, Any] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # a truncated file, or not a checkpoint at all
        raise ValueError(
            f"{option}: cannot read the checkpoint {path} ({err}). Delete or move the file, "
            "or set resume=false to start this run folder from scratch."
        ) from err
    return int(saved.get("epoch", 0)), int(saved.get("global_step", 0))


def plan_start(resume: Any, ckpt_path: str | None, run_dir: str | Path) -> Start:
    """Decide (and log) where training starts; see the module docstring."""
    if resume not in ("auto", False):
        raise ValueError(
            f"resume={resume!r}: choose auto (continue from the run folder's newest checkpoint "
            "when it has one) or false (never read the run folder's checkpoints)"
        )
    own = newest_checkpoint(run_dir) if resume == "auto" else None
    if own is not None:
        epoch, step = read_position(own, "resume=auto")
        log.info("Resuming from %s (epoch %d, step %d)", own, epoch, step)
        if ckpt_path:
            log.info(
                "ckpt_path=%s is not read: this run folder already continued from it "
                "(resume=false starts from ckpt_path again)",
                ckpt_path,
            )
        return Start(str(own), continues_run=True)
    if ckpt_path:
        file = Path(ckpt_path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"ckpt_path={str(file)!r} does not exist")
        epoch, step = read_position(file, f"ckpt_path={file}")
        log.info("Resuming from %s (epoch %d, step %d) in a new run", file, epoch, step)
        return Start(str(file), continues_run=False)
    if resume == "auto":
        log.info("Starting fresh: no checkpoint in %s", Path(run_dir) / LAST_CHECKPOINT)
    else:
        log.info("Starting fresh (resume=false) in %s", run_dir)
    return Start(None, continues_run=False)
