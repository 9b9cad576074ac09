"""Evaluate a PointINS checkpoint on the configured validation split, or predict images.

    python eval.py ckpt_path=outputs/train/.../checkpoints/last.ckpt
    python eval.py ckpt_path=FILE experiment=shapes     # the embedded demo's data
Writes bbox.json, segm.json and metrics.json into the run directory.

    python eval.py ckpt_path=FILE predict.input=DIR_OR_IMAGE [experiment=shapes]
Writes a picture per image (masks, boxes, class names, scores) under predictions/ and the
detections of all images as COCO results in predictions.json (see ``pointins.predict``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from datamodules.transforms import build_test_transforms
from pointins.lit_module import DetectionModule, module_class
from pointins.loggers import (
    finish_runs,
    identity_kwargs,
    log_final,
    run_identity,
    training_run,
)
from pointins.predict import list_images, predict_images
from pointins.runner import build_datamodule, build_trainer

log = logging.getLogger("eval")


def load_checkpoint(path: str, class_names: list[str] | None = None) -> DetectionModule:
    """The trained module (PointINS or a torchvision baseline, whichever wrote the file),
    checked against the dataset's classes when they are given."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"ckpt_path={str(file)!r} does not exist")
    # the checkpoint has the weights: neither the ImageNet weights nor init_from's file
    # are read again, and need not exist any more
    saved = torch.load(file, map_location="cpu", mmap=True, weights_only=False)
    backbone = {**saved["hyper_parameters"]["backbone"], "pretrained": False}
    backbone["checkpoint_path"] = None
    model = module_class(saved["hyper_parameters"]).load_from_checkpoint(
        file, map_location="cpu", weights_only=False, init_from=None, backbone=backbone
    )
    if class_names is not None and list(model.class_names) != list(class_names):
        raise ValueError(
            f"Checkpoint {file} was trained on {len(model.class_names)} classes "
            f"{model.class_names}, but the dataset has {len(class_names)} classes {class_names}."
            " Evaluate on the dataset it was trained on (data=...), or fine-tune on this one "
            "with `python train.py model.init_from=<ckpt>`."
        )
    return model


def wandb_kwargs(cfg: DictConfig) -> dict[str, dict]:
    """The W&B run of an evaluation: ``job_type=eval``, in the group of the training run
    that wrote the checkpoint (its run folder's ``wandb_group`` file), named like a
    training run (``eval`` + overrides)."""
    if "wandb" not in (cfg.get("logger") or {}):
        return {}
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    identity = run_identity(cfg, hydra_cfg, job_type="eval")
    source = training_run(cfg.ckpt_path)
    if source.wandb_group is not None:
        identity = dataclasses.replace(identity, group=source.wandb_group)
    return {"wandb": identity_kwargs(identity, cfg.logger.wandb)}


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    model = load_checkpoint(cfg.ckpt_path, datamodule.class_names)
    trainer = build_trainer(cfg, wandb_kwargs(cfg))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    source = training_run(cfg.ckpt_path)
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
    """Predict ``cfg.predict.input`` (a folder or one image) with the checkpoint."""
    files = list_images(cfg.predict.input)
    module = load_checkpoint(cfg.ckpt_path)
    category_ids = module.category_ids
    if category_ids is None:  # checkpoints written before category ids were stored
        category_ids = list(range(1, len(module.class_names) + 1))
        log.warning("checkpoint has no category ids: predictions.json uses label + 1")
    datamodule = hydra.utils.instantiate(cfg.data)  # test-time resize and normalisation only
    transforms = build_test_transforms(
        datamodule.test_scale, datamodule.max_size, datamodule.mean, datamodule.std
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return predict_images(
        module.model.to(device),
        files,
        transforms,
        cfg.paths.output_dir,
        module.class_names,
        category_ids,
        batch_size=cfg.predict.batch_size,
        draw_score_thresh=cfg.predict.draw_score_thresh,
        size_divisibility=datamodule.collate.size_divisibility,
    )


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    if cfg.predict.input is not None:
        predict(cfg)
    else:
        evaluate(cfg)


if __name__ == "__main__":
    main()
