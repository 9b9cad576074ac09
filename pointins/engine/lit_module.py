"""LightningModules: the training, evaluation and optimisation every detector here shares
(:class:`DetectionModule`), and PointINS built from its config groups (:class:`PointINSModule`)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pointins.engine.checkpoints import init_from_checkpoint
from pointins.engine.schedules import milestones_past_the_end, scale_to_batch
from pointins.evaluation.coco import log_per_class_table
from pointins.model import build_model
from pointins.preprocess import Preprocess

log = logging.getLogger(__name__)


def plain(cfg: Any) -> Any:
    """DictConfig/ListConfig -> plain containers (checkpoints stay loadable weights-only)."""
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


class DetectionModule(pl.LightningModule):
    """Training step, validation with the datamodule's evaluator (COCO/Cityscapes), metric
    and per-class table logging, and the optimiser with its batch-scaled learning rate,
    warm-up and schedule: what PointINS and the torchvision baselines
    (:mod:`pointins.baselines`) share, so that they train and score alike.

    A subclass builds ``self.model``, an ``nn.Module`` with
    ``predict(images, image_sizes, orig_sizes) -> [{boxes, scores, labels[, masks]}]``
    (detections in original-image pixels), implements :meth:`step_losses`, and saves
    hyper-parameters with an ``optim`` entry (``optimizer``, ``scheduler``, and for
    ``auto_scale_lr`` the ``reference_batch``).

    Args:
        class_names: from the dataset's annotation file, in training-label order.
        category_ids: the dataset's category id of each label (for prediction files
            written without the dataset); ``None`` in older checkpoints.
        preprocess: the training data's test-time resize, normalisation and padding
            (:class:`~pointins.preprocess.Preprocess` as a dict), so that inference needs
            no data config; ``None`` in older checkpoints.
    """

    def __init__(
        self,
        class_names: list[str],
        category_ids: list[int] | None = None,
        preprocess: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.category_ids = None if category_ids is None else [int(c) for c in category_ids]
        self.preprocess = None if preprocess is None else Preprocess.from_dict(plain(preprocess))
        self.evaluator = None
        self.validated_at_step: int | None = None  # global step of the last evaluation

    def step_losses(self, batch) -> dict[str, torch.Tensor]:
        """The named loss terms of one training batch (their sum is minimised)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        losses = self.step_losses(batch)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise FloatingPointError(
                f"Non-finite training loss at step {self.global_step} (epoch {self.current_epoch}):"
                f" {terms}. Lower the learning rate (optim.optimizer.lr), lengthen the warm-up "
                f"(optim.scheduler.warmup_steps) or enable gradient clipping "
                f"(trainer.gradient_clip_val)."
            )
        bs = len(batch.image_ids)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=bs)
        # instances the augmentation removed (boxes under 1 px after crop and resize),
        # summed over the epoch's steps and the ranks
        self.log(
            "data/instances_dropped",
            float(batch.instances_dropped),
            on_step=False,
            on_epoch=True,
            reduce_fx="sum",
            sync_dist=True,
            batch_size=bs,
        )
        return loss

    # --------------------------------------------------------------- evaluation
    def on_validation_epoch_start(self) -> None:
        output_dir = Path(self.trainer.default_root_dir)
        self.evaluator = self.trainer.datamodule.build_evaluator(output_dir)
        self._inference_seconds, self._inference_images = 0.0, 0

    def validation_step(self, batch, batch_idx: int) -> None:
        start = time.perf_counter()
        predictions = self.model.predict(batch.images, batch.image_sizes, batch.orig_sizes)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._inference_seconds += time.perf_counter() - start
        self._inference_images += len(batch.image_ids)
        self.evaluator.update(batch.image_ids, predictions)

    def on_validation_epoch_end(self) -> None:
        # inference speed: model, post-processing and pasting at the original resolution
        # (what the paper's FPS counts); data loading and the COCO encoding are not in it
        speed = {}
        if self._inference_seconds > 0:
            speed["speed/images_per_second"] = self._inference_images / self._inference_seconds
        metrics = self.evaluator.compute(extra=speed)  # AP identical on every rank
        per_class = getattr(self.evaluator, "per_class", [])  # rows filled on rank 0 only
        self.evaluator = None
        if not self.trainer.sanity_checking:
            # per-class APs go to metrics.json and one W&B table, not to a chart per class
            overall = {k: v for k, v in metrics.items() if "/AP-" not in k}
            self.log_dict(overall, sync_dist=False)
            if self.trainer.is_global_zero:
                log_per_class_table(self.trainer.loggers, per_class, self.global_step)
            self.validated_at_step = self.global_step

    # ------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict:
        optim = self.hparams.optim
        total = self.trainer.estimated_stepping_batches  # also sets num_training_batches
        steps_per_epoch = max(
            1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches)
        )
        lr, warmup_steps = self._batch_scaled(optim)
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = instantiate(optim["optimizer"], lr=lr)(params)
        scheduler_cfg = optim["scheduler"]
        log.info("%d optimiser steps in total, %d per epoch", total, steps_per_epoch)
        late = milestones_past_the_end(scheduler_cfg["milestones"], steps_per_epoch, total)
        if late:
            log.warning(
                "optim.scheduler.milestones %s lie at or beyond the end of this run (%d steps, "
                "%s epochs): the learning rate never decays there. Shorten the milestones with "
                "the schedule, e.g. optim.scheduler.milestones=[...] beside trainer.max_epochs.",
                late,
                total,
                self.trainer.max_epochs,
            )
        scheduler = instantiate(scheduler_cfg, warmup_steps=warmup_steps)(
            optimizer, steps_per_epoch=steps_per_epoch
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _batch_scaled(self, optim: Mapping) -> tuple[float, int]:
        """Learning rate and warm-up for the run's total batch (``optim.auto_scale_lr``)."""
        lr = float(optim["optimizer"]["lr"])
        warmup_steps = int(optim["scheduler"].get("warmup_steps", 0))
        if not optim.get("auto_scale_lr", False):
            return lr, warmup_steps
        trainer = self.trainer
        per_device = int(trainer.datamodule.batch_size)
        total_batch = trainer.world_size * per_device * trainer.accumulate_grad_batches
        reference = int(optim["reference_batch"])
        scaled_lr, scaled_warmup = scale_to_batch(lr, warmup_steps, total_batch, reference)
        log.info(
            "Total batch %d (%d devices x %d nodes x %d images x %d accumulated) against the "
            "recipe's %d (optim.reference_batch): lr %.3g -> %.3g, warm-up %d -> %d steps "
            "(optim.auto_scale_lr=false keeps the configured values)",
            total_batch,
            trainer.num_devices,
            trainer.num_nodes,
            per_device,
            trainer.accumulate_grad_batches,
            reference,
            lr,
            scaled_lr,
            warmup_steps,
            scaled_warmup,
        )
        scaled = {"optim/total_batch": total_batch, "optim/lr": scaled_lr}
        scaled["optim/warmup_steps"] = scaled_warmup
        for logger in trainer.loggers:
            logger.log_hyperparams(scaled)
        return scaled_lr, scaled_warmup


class PointINSModule(DetectionModule):
    """PointINS (:func:`pointins.model.build_model`) trained, validated and optimised by
    :class:`DetectionModule`.

    Args:
        backbone, neck, detector, mask: the Hydra config groups of the same names
            (``mask=None``: the plain detector).
        optim: ``optimizer`` and ``scheduler`` partial configs, and ``max_epochs``.
        class_names: from the dataset's annotation file, in training-label order.
        category_ids: the dataset's category id of each label (for prediction files
            written without the dataset); ``None`` in older checkpoints.
        preprocess: the data's test-time preprocessing (see :class:`DetectionModule`).
        det_weight: λ_det of §3.4 (λ_mask is ``mask.loss_weight``).
        init_from: checkpoint to initialise from (e.g. COCO -> Cityscapes); tensors whose
            shape differs (class logits) are skipped, and both lists are logged.
        compile: ``torch.compile`` the convolutional network (see
            :meth:`PointINS.compile_network`); checkpoints are the same either way.
    """

    def __init__(
        self,
        backbone: Mapping,
        neck: Mapping,
        detector: Mapping,
        mask: Mapping | None,
        optim: Mapping,
        class_names: list[str],
        category_ids: list[int] | None = None,
        preprocess: Mapping[str, Any] | None = None,
        det_weight: float = 1.0,
        init_from: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(class_names, category_ids, preprocess)
        hparams = {
            "backbone": plain(backbone),
            "neck": plain(neck),
            "detector": plain(detector),
            "mask": plain(mask),
            "optim": plain(optim),
            "class_names": list(class_names),
            "category_ids": self.category_ids,
            "preprocess": self.preprocess and self.preprocess.to_dict(),
            "det_weight": det_weight,
            "init_from": init_from,
            "compile": compile,
        }
        self.model = build_model(
            hparams["backbone"],
            hparams["neck"],
            hparams["detector"],
            hparams["mask"],
            len(self.class_names),
            det_weight,
        )
        # the normalisation actually built (norm=auto depends on the weights): a checkpoint
        # rebuilt without the ImageNet weights gets the same layers
        hparams["backbone"] = {**hparams["backbone"], "norm": self.model.backbone.norm}
        # in the checkpoint, not in the loggers: train.py logs the whole resolved config
        self.save_hyperparameters(hparams, logger=False)
        if init_from is not None:
            init_from_checkpoint(self, init_from)  # logs what was loaded and re-initialised
        if compile:
            self.model.compile_network()  # after loading: compiling is lazy, names unchanged

    def step_losses(self, batch) -> dict[str, torch.Tensor]:
        return self.model.losses(batch.images, batch.targets, self._step_generator())

    def on_train_epoch_end(self) -> None:
        """With ``compile``: how many graphs torch.compile has built so far (it builds one
        per new input-shape family it cannot reuse; ``data.size_buckets`` bounds them)."""
        if self.hparams.compile:
            from torch._dynamo.utils import counters

            graphs = int(counters["stats"]["unique_graphs"])
            self.log("compile/graphs", float(graphs), rank_zero_only=True)
            log.info("torch.compile: %d graphs compiled so far", graphs)

    def _step_generator(self) -> torch.Generator:
        """RNG of this step's mask sampling: a function of (seed, step), so that a resumed
        run samples exactly what the uninterrupted run would have."""
        seed = (torch.initial_seed() * 1_000_003 + self.global_step) % 2**63
        return torch.Generator(device=self.device).manual_seed(seed)
