"""Evaluate a PointINS checkpoint on the configured validation split.

    python eval.py ckpt_path=outputs/train/.../checkpoints/last.ckpt
    python eval.py ckpt_path=FILE experiment=shapes     # the embedded demo's data
Writes bbox.json, segm.json and metrics.json into the run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from pointins.lit_module import PointINSModule
from pointins.runner import build_datamodule, build_trainer

log = logging.getLogger("eval")


def load_checkpoint(path: str, class_names: list[str]) -> PointINSModule:
    """The trained module, checked against the dataset's classes."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"ckpt_path={str(file)!r} does not exist")
    model = PointINSModule.load_from_checkpoint(file, map_location="cpu", weights_only=False)
    if list(model.class_names) != list(class_names):
        raise ValueError(
            f"Checkpoint {file} was trained on {len(model.class_names)} classes "
            f"{model.class_names}, but the dataset has {len(class_names)} classes {class_names}."
            " Evaluate on the dataset it was trained on (data=...), or fine-tune on this one "
            "with `python train.py model.init_from=<ckpt>`."
        )
    return model


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    model = load_checkpoint(cfg.ckpt_path, datamodule.class_names)
    trainer = build_trainer(cfg)
    trainer.validate(model, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("Metrics written to %s", Path(cfg.paths.output_dir) / "metrics.json")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
