"""Train PointINS (or a torchvision baseline: ``baseline=fcos|retinanet|maskrcnn``).

python train.py                                   # paper baseline: COCO, RetinaNet R50 1x,
                                                  # from ImageNet weights
python train.py detector=fcos backbone=r101
python train.py experiment=shapes                 # CPU demo on the embedded data
python train.py -m ablation=iz_inputs             # one table of the paper
python train.py experiment=shapes baseline=maskrcnn trainer.max_time=00:00:15:48
                                                  # torchvision's Mask R-CNN (or fcos,
                                                  # retinanet), same loop, 15:48 budget
python train.py hydra.run.dir=runs/coco_r50      # rerun the same: continues from the
                                                  # folder's newest checkpoint (resume=auto)
python train.py ckpt_path=outputs/.../last.ckpt   # a new run from another run's checkpoint
"""

from __future__ import annotations

import logging
import warnings

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pointins.backbones.pretrained import resolve_weights
from pointins.engine.loggers import (
    finish_runs,
    identity_kwargs,
    log_final,
    run_identity,
    store_group,
    wandb_run_id,
)
from pointins.engine.resume import plan_start
from pointins.engine.runner import build_datamodule, build_trainer

log = logging.getLogger("train")

# Lightning warns that a DataLoader without a state_dict cannot continue an epoch from a
# checkpoint; the datamodules' loaders do (datamodules.sampling.ResumableDataLoader)
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")


def train(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    # the backbone's ImageNet weights first: offline without them, stop before reading data
    backbone = cfg.model.backbone
    resolve_weights(backbone.name, backbone.pretrained, backbone.checkpoint_path)
    start = plan_start(cfg.resume, cfg.get("ckpt_path"), cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    model = instantiate(
        cfg.model,
        optim=cfg.optim,
        class_names=datamodule.class_names,
        category_ids=datamodule.label_to_cat_id,
        preprocess=datamodule.preprocess.to_dict(),
        _recursive_=False,
    )
    logger_kwargs = {}
    if "wandb" in (cfg.get("logger") or {}):  # a continued run logs into its W&B run
        run_id = wandb_run_id(cfg.paths.output_dir, start.continues_run)
        hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
        identity = run_identity(cfg, hydra_cfg, job_type="train")
        store_group(cfg.paths.output_dir, identity.group)  # eval.py joins this group
        logger_kwargs["wandb"] = {
            "id": run_id,
            "resume": "allow",
            **identity_kwargs(identity, cfg.logger.wandb),
        }
    trainer = build_trainer(cfg, logger_kwargs)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("hydra", None)
    try:
        # the one config record: the whole resolved config (the module's own hparams are
        # kept out of the loggers)
        for logger in trainer.loggers:
            logger.log_hyperparams(resolved)
        trainer.fit(model, datamodule=datamodule, ckpt_path=start.ckpt_path)
        if not trainer.interrupted and model.validated_at_step != trainer.global_step:
            # stopped between evaluations (trainer.max_steps, limit_train_batches): score the
            # final weights, so every run leaves a metrics.json (sweep tables read it)
            log.info("Evaluating the final weights (step %d)", trainer.global_step)
            trainer.validate(model, datamodule=datamodule, verbose=False)
        if not trainer.interrupted:
            log_final(trainer.loggers, trainer.callback_metrics, trainer.global_step)
    finally:
        finish_runs(trainer.loggers)  # each job of a multirun writes its own W&B run
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("Run directory: %s", cfg.paths.output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(cfg.monitor)  # the value a Hydra sweeper optimises


if __name__ == "__main__":
    main()
