"""Evaluate a PointINS checkpoint on the configured validation split, or predict images.

    python eval.py ckpt_path=outputs/train/.../checkpoints/last.ckpt
    python eval.py ckpt_path=FILE experiment=shapes     # the embedded demo's data
Writes bbox.json, segm.json and metrics.json into the run directory.

    python eval.py ckpt_path=FILE predict.input=DIR_OR_IMAGE
Resizes and normalises as in training (stored in the checkpoint). Writes a picture per
image (masks, boxes, class names, scores) under predictions/ and the
detections of all images as COCO results in predictions.json (see ``pointins.inference.predict``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pointins.engine.lit_module import DetectionModule
from pointins.engine.loading import load_module
from pointins.engine.loggers import (
    TrainingRun,
    finish_runs,
    identity_kwargs,
    log_final,
    run_identity,
    training_run,
)
from pointins.engine.runner import build_datamodule, build_trainer
from pointins.inference.predict import list_images, predict_images
from pointins.inference.predictor import Predictor

log = logging.getLogger("eval")


def load_checkpoint(path: str, class_names: list[str] | None = None) -> DetectionModule:
    """The trained module (PointINS or a torchvision baseline, whichever wrote the file),
    checked against the dataset's classes when they are given."""
    model = load_module(path)
    if class_names is not None and list(model.class_names) != list(class_names):
        raise ValueError(
            f"Checkpoint {path} was trained on {len(model.class_names)} classes "
            f"{model.class_names}, but the dataset has {len(class_names)} classes {class_names}."
            " Evaluate on the dataset it was trained on (data=...), or fine-tune on this one "
            "with `python train.py model.init_from=<ckpt>`."
        )
    return model


def wandb_kwargs(cfg: DictConfig, source: TrainingRun) -> dict[str, dict]:
    """The W&B run of an evaluation: ``job_type=eval``, in the group of the training run
    ``source`` that wrote the checkpoint (its run folder's ``wandb_group`` file), named
    like a training run (``eval`` + overrides)."""
    if "wandb" not in (cfg.get("logger") or {}):
        return {}
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    identity = run_identity(cfg, hydra_cfg, job_type="eval")
    if source.wandb_group is not None:
        identity = dataclasses.replace(identity, group=source.wandb_group)
    return {"wandb": identity_kwargs(identity, cfg.logger.wandb)}


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    model = load_checkpoint(cfg.ckpt_path, datamodule.class_names)
    trained = model.preprocess
    changes = {} if trained is None else trained.differences(datamodule.preprocess)
    if changes:
        log.warning(
            "evaluating with preprocessing unlike training (data.*): %s; pass the "
            "experiment/data the checkpoint was trained with to evaluate it as trained",
            ", ".join(f"{k} {a} (training) -> {b}" for k, (a, b) in changes.items()),
        )
    source = training_run(cfg.ckpt_path)
    trainer = build_trainer(cfg, wandb_kwargs(cfg, source))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    resolved["train_run"] = {"dir": source.dir, "wandb_id": source.wandb_id}
    try:
        for logger in trainer.loggers:  # test scale, checkpoint and the training run
            logger.log_hyperparams(resolved)
        trainer.validate(model, datamodule=datamodule)
        log_final(trainer.loggers, trainer.callback_metrics, trainer.global_step)
    finally:
        finish_runs(trainer.loggers)  # each job of `eval.py -m` writes its own W&B run
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("Metrics written to %s", Path(cfg.paths.output_dir) / "metrics.json")
    return metrics


def predict(cfg: DictConfig) -> Path:
    """Predict ``cfg.predict.input`` (a folder or one image) with the checkpoint, at the
    preprocessing it stores; ``predict.test_scale`` / ``predict.max_size`` /
    ``predict.score_thresh`` / ``predict.mask_thresh`` replace the stored values."""
    options = cfg.predict
    files = list_images(options.input)
    preprocess = {k: options[k] for k in ("test_scale", "max_size") if options[k] is not None}
    module = load_module(cfg.ckpt_path, options.score_thresh, options.mask_thresh)
    if module.preprocess is None:  # an older checkpoint: the data config's, said aloud
        preprocess = dataclasses.replace(hydra.utils.instantiate(cfg.data).preprocess, **preprocess)
        log.warning(
            "checkpoint %s stores no preprocessing: using the data config's %s (pass the "
            "experiment/data it was trained with)",
            cfg.ckpt_path,
            preprocess,
        )
    predictor = Predictor.from_module(module, batch_size=options.batch_size, preprocess=preprocess)
    log.info("preprocessing: %s", predictor.preprocess)
    return predict_images(
        predictor, files, cfg.paths.output_dir, draw_score_thresh=options.draw_score_thresh
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    if cfg.predict.input is not None:
        predict(cfg)
    else:
        evaluate(cfg)


if __name__ == "__main__":
    main()
