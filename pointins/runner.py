"""What ``train.py`` and ``eval.py`` share: building the pieces a config describes."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_all(group: Mapping | None) -> list:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (None entries skipped)."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """The datamodule, with its data prepared (the embedded data generated if missing) and
    its categories read, so the model can be built for the dataset's classes."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.read_categories()
    log.info("Dataset classes (%d): %s", datamodule.num_classes, datamodule.class_names)
    return datamodule


def build_trainer(cfg: DictConfig, **overrides) -> pl.Trainer:
    return instantiate(
        cfg.trainer,
        callbacks=instantiate_all(cfg.get("callbacks")),
        logger=instantiate_all(cfg.get("logger")) or False,
        **overrides,
    )
