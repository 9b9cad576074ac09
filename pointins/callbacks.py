"""Callbacks for reviewing runs: training throughput and a fixed panel of validation
images in Weights & Biases."""

from __future__ import annotations

import time

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

from datamodules.preview import denormalize


def _label_map(masks: Tensor, labels: Tensor, order: Tensor) -> np.ndarray:
    """``(n, H, W)`` masks -> ``(H, W)`` uint8 map of class id + 1 (0 = background), the
    instances painted in ``order`` (later ones on top)."""
    out = torch.zeros(masks.shape[-2:], dtype=torch.uint8)
    for i in order.tolist():  # at most the panel's detections, off the training path
        out[masks[i].bool()] = int(labels[i]) + 1
    return out.numpy()


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
    the W&B media panel. Predictions scoring under ``score_thresh`` are left out of the
    picture (display only; the metrics use every detection). Does nothing without a
    :class:`WandbLogger`, during the sanity check, and on ranks other than 0.
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
            pred = {k: v[keep] for k, v in pred.items()}
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
            masks = {
                "ground_truth": {
                    "mask_data": _label_map(
                        target["masks"], target["labels"], torch.arange(len(target["labels"]))
                    ),
                    "class_labels": class_labels,
                }
            }
            if "masks" in pred:
                masks["predictions"] = {
                    "mask_data": _label_map(
                        pred["masks"], pred["labels"], pred["scores"].argsort()
                    ),
                    "class_labels": class_labels,
                }
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
