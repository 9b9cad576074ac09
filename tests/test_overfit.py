"""Overfit checks (slow): a few embedded images, a few hundred CPU steps, then the model
must reproduce them — the whole loop (targets, losses, decoding, masks, evaluator) is right.

    make test-slow        # or: pytest -m slow tests/test_overfit.py
"""

from __future__ import annotations

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import train as train_entry

OVERFIT = [
    "experiment=shapes",
    "data.num_train=4",
    "data.num_val=1",
    # evaluate on the training images themselves
    "data.val_ann=annotations/instances_train.json",
    "data.val_img_dir=images/train",
    "data.train_scales=[256]",
    "data.max_size=384",
    "data.test_scale=256",
    "data.hflip_prob=0.0",
    "data.batch_size=4",
    "data.val_batch_size=4",
    "data.num_workers=0",
    "optim.optimizer.lr=1e-3",
    "optim.scheduler.warmup_steps=50",
    "optim.scheduler.milestones=[250]",  # epochs: one step each (4 images, batch 4)
    "optim.max_epochs=300",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "logger=csv",
    "callbacks.progress_bar.refresh_rate=0",
]


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
@pytest.mark.parametrize("mask", ["none", "pointins"])
def test_overfit_a_few_images(compose_cfg, tmp_path, detector, mask):
    cfg = compose_cfg(
        [*OVERFIT, f"detector={detector}", f"mask={mask}", f"paths.data_dir={tmp_path}"]
    )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        del cfg.hydra
    metrics = train_entry.train(cfg)
    assert metrics["bbox/AP50"] >= 90.0, metrics
    if mask == "pointins":
        assert metrics["segm/AP50"] >= 80.0, metrics
