"""What tests record runs with: a W&B logger that keeps what is logged, and callbacks that
training tests add to a run: ``+callbacks.record._target_=recorders.RecordBatches
+callbacks.record.out_dir=DIR`` (a subprocess needs ``PYTHONPATH=tests``)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger


class RecordBatches(pl.Callback):
    """Append every training batch a rank trains to ``<out_dir>/batches-rank<r>.jsonl``:
    epoch, step, batch index, image ids and whether each image is landscape."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "batch_idx": batch_idx,
            "image_ids": [int(i) for i in batch.image_ids],
            "landscape": [w > h for h, w in batch.orig_sizes],
        }
        with open(self.out_dir / f"batches-rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def read_batches(out_dir: str | Path, rank: int = 0) -> list[dict]:
    path = Path(out_dir) / f"batches-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


class Interrupted(RuntimeError):
    """Raised by :class:`InterruptAtStep`: the run stops as if it had been killed."""


class InterruptAtStep(pl.Callback):
    """Stop the run once ``step`` optimiser steps are done, before the next batch: raise
    :class:`Interrupted` (in-process tests), or, with ``hang=True``, write
    ``<marker>`` and sleep until the test SIGKILLs the process.

    ``step`` may be left None and read from the environment variable ``env`` instead, so
    that a rerun of the identical command line runs through.
    """

    def __init__(
        self,
        step: int | None = None,
        hang: bool = False,
        marker: str | None = None,
        env: str = "POINTINS_TEST_STOP_AT_STEP",
    ) -> None:
        if step is None and os.environ.get(env):
            step = int(os.environ[env])
        self.step = step
        self.hang = hang
        self.marker = marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.step is None or trainer.global_step < self.step:
            return
        if not self.hang:
            raise Interrupted(f"stopped at step {trainer.global_step}")
        if self.marker:
            Path(self.marker).write_text(f"{trainer.global_step}\n")
        while True:
            time.sleep(1)


class RecordingWandbLogger(WandbLogger):
    """A WandbLogger whose run records what is logged (no W&B run, no network)."""

    def __init__(self) -> None:
        super().__init__(offline=True)
        self.logged: list[dict] = []

    @property
    def experiment(self):
        return SimpleNamespace(log=self.logged.append)
