"""Callbacks for reviewing runs: progress lines for batch jobs, training throughput and a
fixed panel of validation images in Weights & Biases."""

from __future__ import annotations

import logging
import math
import sys
import time
from datetime import timedelta

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

from pointins.preprocess import denormalize

log = logging.getLogger(__name__)


# W&B stores a mask layer as an 8-bit PNG through int8: ids 1..127, 0 is background
MAX_PANEL_INSTANCES = 127


def instance_mask_data(masks: Tensor, captions: list[str]) -> dict:
    """One W&B mask layer in which every instance keeps its own id.

    ``masks`` (n, H, W), first on top where they overlap, and one caption per instance ->
    ``{"mask_data": (H, W) uint8 map of instance id (k + 1 for masks[k], 0 = background),
    "class_labels": {k + 1: captions[k]}}``. Only the first :data:`MAX_PANEL_INSTANCES`
    instances are drawn.
    """
    masks, captions = masks[:MAX_PANEL_INSTANCES], captions[:MAX_PANEL_INSTANCES]
    if masks.shape[0] != len(captions):
        raise ValueError(
            f"instance_mask_data: {masks.shape[0]} masks for {len(captions)} captions."
        )
    none = MAX_PANEL_INSTANCES + 1
    ids = torch.arange(1, masks.shape[0] + 1, dtype=torch.int16)[:, None, None]  # (n, 1, 1)
    layers = torch.where(masks.bool(), ids, none)  # (n, H, W): the id where the mask is on
    background = layers.new_full((1, *masks.shape[-2:]), none)  # (1, H, W)
    first = torch.cat([layers, background]).amin(dim=0)  # (H, W): the first mask on top
    id_map = torch.where(first == none, 0, first).to(torch.uint8)
    return {"mask_data": id_map.numpy(), "class_labels": dict(enumerate(captions, start=1))}


def _box_data(boxes: Tensor, labels: Tensor, names: list[str], scores: Tensor | None) -> list:
    rows = []
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        label = int(labels[i])
        row = {
            "position": {"minX": x1, "minY": y1, "maxX": x2, "maxY": y2},
            "domain": "pixel",
            "class_id": label + 1,
            "box_caption": names[label],
        }
        if scores is not None:
            row["scores"] = {"score": float(scores[i])}
            row["box_caption"] = f"{names[label]} {float(scores[i]):.2f}"
        rows.append(row)
    return rows


class ValidationImages(pl.Callback):
    """After every validation, log the first ``num_images`` validation images with predicted
    and ground-truth masks and boxes as W&B images (``val/predictions``).

    The first images of the split, always the same ones, so runs compare side by side in
    the W&B media panel. Each instance is its own mask id (:func:`instance_mask_data`), so
    touching objects of one class stay apart: predictions are captioned "<class> <score>"
    and drawn highest score on top, ground-truth instances "<class>". Predictions scoring
    under ``score_thresh`` are left out of the picture (display only; the metrics use every
    detection). Does nothing without a :class:`WandbLogger`, during the sanity check, and on
    ranks other than 0.
    """

    def __init__(self, num_images: int = 8, score_thresh: float = 0.3) -> None:
        self.num_images = num_images
        self.score_thresh = score_thresh

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or trainer.sanity_checking or not trainer.is_global_zero:
            return
        import wandb

        datamodule = trainer.datamodule
        dataset = datamodule.val_dataset
        samples = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
        if not samples:
            return
        batch = datamodule.collate(samples)
        # predictions at the transformed size (orig_sizes = image_sizes): drawn on the input
        predictions = pl_module.model.predict(
            batch.images.to(pl_module.device), batch.image_sizes, batch.image_sizes
        )
        names = list(pl_module.class_names)
        class_labels = {i + 1: name for i, name in enumerate(names)}
        panel = []
        for (h, w), image, target, pred in zip(
            batch.image_sizes, batch.images, batch.targets, predictions, strict=True
        ):
            pred = {k: v.cpu() for k, v in pred.items()}
            keep = pred["scores"] >= self.score_thresh
            order = pred["scores"][keep].argsort(descending=True)
            pred = {k: v[keep][order] for k, v in pred.items()}  # highest score first
            pixels = denormalize(image[:, :h, :w].cpu(), datamodule.mean, datamodule.std)
            boxes = {
                "predictions": {
                    "box_data": _box_data(pred["boxes"], pred["labels"], names, pred["scores"]),
                    "class_labels": class_labels,
                },
                "ground_truth": {
                    "box_data": _box_data(target["boxes"], target["labels"], names, None),
                    "class_labels": class_labels,
                },
            }
            gt_captions = [names[label] for label in target["labels"].tolist()]
            masks = {"ground_truth": instance_mask_data(target["masks"].cpu(), gt_captions)}
            if "masks" in pred:
                captions = [
                    f"{names[label]} {score:.2f}"
                    for label, score in zip(
                        pred["labels"].tolist(), pred["scores"].tolist(), strict=True
                    )
                ]
                masks["predictions"] = instance_mask_data(pred["masks"], captions)
            panel.append(wandb.Image(pixels.permute(1, 2, 0).numpy(), boxes=boxes, masks=masks))
        for logger in loggers:
            logger.experiment.log(
                {"val/predictions": panel, "trainer/global_step": trainer.global_step}
            )


class TrainingSpeed(pl.Callback):
    """Log ``speed/train_images_per_second`` every ``trainer.log_every_n_steps`` batches:
    images per wall-clock second over that window (data loading included), per rank.

    No device synchronisation: over a window of many steps the per-step syncs of logging
    keep host and device within a step of each other.
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._images = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._images = time.perf_counter(), 0  # the dataloader restarts here

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._images += len(batch)
        if (batch_idx + 1) % max(1, trainer.log_every_n_steps) or self._start is None:
            return
        now = time.perf_counter()
        rate = self._images / max(now - self._start, 1e-9)
        pl_module.log("speed/train_images_per_second", rate, on_step=True, on_epoch=False)
        self._start, self._images = now, 0


def progress_bar(refresh_rate: int = 10) -> ProgressBar:
    """The progress callback for where stdout goes: on a terminal a tqdm bar redrawn every
    ``refresh_rate`` batches; otherwise (a SLURM job, ``python train.py > log.txt``) a
    :class:`ProgressLines` line every ``trainer.log_every_n_steps`` steps, which a log file
    keeps readable. Decided by stdout because Hydra's console log goes there.
    ``refresh_rate=0`` turns progress output off either way."""
    if refresh_rate == 0 or sys.stdout.isatty():
        return TQDMProgressBar(refresh_rate=refresh_rate)
    return ProgressLines()


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds))) if math.isfinite(seconds) else "?"


def _loss_terms(metrics: dict[str, Tensor]) -> dict[str, float]:
    """The ``train/*`` metrics but ``train/loss`` (the total), named without ``train/`` and
    ``loss_``; the ``_step``/``_epoch`` copies of a metric logged both ways left out."""
    terms = {}
    for key, value in metrics.items():
        if not key.startswith("train/") or key == "train/loss":
            continue
        base, _, suffix = key.rpartition("_")
        if suffix in ("step", "epoch") and base in metrics:
            continue
        terms[key.removeprefix("train/").removeprefix("loss_")] = float(value)
    return terms


class ProgressLines(ProgressBar):
    """The progress bar of batch jobs: a plain log line every ``trainer.log_every_n_steps``
    optimiser steps, from rank 0, in detectron2's manner::

        [train] iter 1200/87950  eta 5:12:03  lr 5.00e-05  loss 1.234 (cls 0.41 box_reg 0.32
        centerness 0.58 mask 0.21)  data 0.012s  step 0.213s  mem 3012M

    (one line). ``iter`` counts optimiser steps of the whole run, a resumed one included;
    ``eta`` is the steps left at the mean time per step since the previous line, evaluations
    not included; ``lr`` is the first parameter group's. The losses are the ``train/*``
    values the module logged in this step, the ones the loggers record; reading them waits
    for the device once per line, as a tqdm redraw does. ``data`` is the mean wait for a
    batch (loading and the copy to the device), ``step`` the mean time from a batch to the
    end of its training step (forward, backward and, when it steps, the optimiser); both are
    per batch and host clock times: as the loop does not wait for the GPU every step, the
    split between them can blur, but their sum is the time per batch. ``mem`` is the peak
    CUDA memory allocated so far on this device (left out on the CPU). A validation adds a
    line when it starts and one when it ends.

    Lines go through Python logging (logger ``pointins.engine.callbacks``): under Hydra they reach
    the console and the run directory's ``train.log``, which stays with the checkpoints.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._total: float = math.inf  # optimiser steps of the whole run
        self._line_step = 0  # global step at the previous line
        self._data = self._compute = 0.0  # seconds since the previous line
        self._batches = 0
        self._batch_end = self._batch_start = self._started = self._val_started = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _reset_window(self, step: int) -> None:
        self._line_step, self._data, self._compute, self._batches = step, 0.0, 0.0, 0

    # ------------------------------------------------------------------------- training
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._total = trainer.estimated_stepping_batches
        self._reset_window(trainer.global_step)
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batch_end = time.perf_counter()  # the wait for the loader's workers is data time

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()
        self._data += self._batch_start - self._batch_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._batch_end = time.perf_counter()
        self._compute += self._batch_end - self._batch_start
        self._batches += 1
        step = trainer.global_step
        if step == self._line_step or step % max(1, trainer.log_every_n_steps):
            return  # between lines, or an accumulating batch after the line's step
        if self._enabled:
            log.info(self._train_line(trainer, pl_module))
        self._reset_window(step)

    def _train_line(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        step = trainer.global_step
        per_step = (self._data + self._compute) / (step - self._line_step)
        total = int(self._total) if math.isfinite(self._total) else "?"
        parts = [
            f"[train] iter {step}/{total}",
            f"eta {_duration((self._total - step) * per_step)}",
        ]
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        metrics = trainer.callback_metrics
        if "train/loss" in metrics:
            loss = f"loss {float(metrics['train/loss']):.4g}"
            terms = " ".join(f"{name} {value:.4g}" for name, value in _loss_terms(metrics).items())
            parts.append(f"{loss} ({terms})" if terms else loss)
        parts.append(f"data {self._data / self._batches:.3f}s")
        parts.append(f"step {self._compute / self._batches:.3f}s")
        if pl_module.device.type == "cuda":
            parts.append(f"mem {torch.cuda.max_memory_allocated(pl_module.device) >> 20}M")
        return "  ".join(parts)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._enabled:
            elapsed = _duration(time.perf_counter() - self._started)
            log.info("[train] done: iter %d in %s", trainer.global_step, elapsed)

    # ----------------------------------------------------------------------- validation
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_started = time.perf_counter()
        if self._enabled and not trainer.sanity_checking:
            batches = sum(trainer.num_val_batches)
            log.info("[val] %s batches at iter %d", batches, trainer.global_step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self._batch_end = now  # the next batch's wait starts now, not at the last batch
        if self._enabled and not trainer.sanity_checking:
            log.info("[val] done in %s", _duration(now - self._val_started))
