"""What ``train.py`` and ``eval.py`` share: building the pieces a config describes."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from pointins.engine.slurm import cluster_plugins

log = logging.getLogger(__name__)


def instantiate_all(group: Mapping | None, kwargs: Mapping[str, Mapping] | None = None) -> list:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (None entries
    skipped); ``kwargs[name]`` are extra arguments of entry ``name``."""
    if not group:
        return []
    kwargs = kwargs or {}
    return [
        instantiate(c, **kwargs.get(name, {}))
        for name, c in group.items()
        if c is not None and "_target_" in c
    ]


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """The datamodule, with its data prepared (the embedded data generated if missing) and
    its categories read, so the model can be built for the dataset's classes."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.read_categories()
    log.info("Dataset classes (%d): %s", datamodule.num_classes, datamodule.class_names)
    return datamodule


def build_trainer(
    cfg: DictConfig, logger_kwargs: Mapping[str, Mapping] | None = None, **overrides
) -> pl.Trainer:
    """The Trainer with the configured callbacks and loggers (``logger_kwargs[name]``: extra
    arguments of logger ``name``)."""
    # the configured plugins and, inside a SLURM job, the requeue on the time limit
    plugins = [*instantiate(cfg.trainer.get("plugins") or [], _convert_="all")]
    plugins += cluster_plugins()
    trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_all(cfg.get("callbacks")),
        logger=instantiate_all(cfg.get("logger"), logger_kwargs) or False,
        plugins=plugins or None,
        **overrides,
    )
    if trainer.world_size > 1 and cfg.trainer.get("use_distributed_sampler", True):
        raise ValueError(
            f"trainer.use_distributed_sampler=true on {trainer.world_size} processes: the "
            "datamodules split the data between processes themselves "
            "(datamodules/sampling.py), and Lightning's sampler wrapper would split it again. "
            "Set trainer.use_distributed_sampler=false (conf/trainer/default.yaml does)."
        )
    return trainer
