"""Accuracy gate: a trained PointINS finds again what it was trained on, scored through the
validation path every run is scored by.

A shrunken PointINS overfits two embedded images; ``train(cfg)`` then scores those images
as it scores any validation set: the datamodule's test transforms, ``PointINS.predict``
(boxes mapped back to the original image size, masks pasted into them) and the COCO
evaluator. Box and mask AP must clear floors that the overfit model clears with margin and
that each of these falls far below: boxes left at the network's input scale, labels shifted
by one class, each mask pasted into another detection's box, a mask loss that never
reaches the training loss (λ_mask = 0; its untrained masks, filling their boxes, can still
score a mask AP50 near 70, hence the floor on mask AP as well). PointINS-FCOS and
PointINS-RetinaNet, each with point templates (the paper's) and box templates.
"""

from __future__ import annotations

import os

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from tiny import TINY_MODEL

import train as train_entry

STEPS = 90  # one optimiser step per epoch: 2 images, one batch

GATE = [
    "experiment=shapes",
    # 470x469 and 319x294 px, 11 instances of 7 of the 8 classes, none under 16x16 px at
    # the network's input scale; one aspect-ratio group, so one batch
    "data.generator_seed=350",
    "data.num_train=2",
    "data.num_val=1",
    # evaluate on the training images themselves, at their original sizes
    "data.val_ann=annotations/instances_train.json",
    "data.val_img_dir=images/train",
    "data.train_scales=[128]",  # 2.3x and 3.7x smaller: boxes must be mapped back
    "data.max_size=256",
    "data.test_scale=128",
    "data.hflip_prob=0.0",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "data.num_workers=0",
    # FPN and towers 32 wide, one conv per tower, 16x16 masks, mask head 16 wide
    *TINY_MODEL,
    "optim.optimizer.lr=3e-3",
    "+optim.optimizer.fused=true",  # one kernel per step instead of one per tensor and op
    "optim.auto_scale_lr=false",
    "optim.scheduler.warmup_steps=10",
    f"optim.scheduler.milestones=[{int(STEPS * 0.8)}]",
    f"optim.max_epochs={STEPS}",
    "trainer.precision=32-true",
    # without it, CPU training with several threads differs from run to run in the last bits
    "trainer.deterministic=true",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    # no checkpoint files: the trained weights are scored in memory
    "~callbacks.last_checkpoint",
    "~callbacks.best_checkpoint",
    "logger=csv",
    "callbacks.progress_bar.refresh_rate=0",
    "seed=0",
]

#: the lowest score each case must reach (COCO AP, percent)
FLOORS = {"bbox/AP50": 80.0, "bbox/AP": 60.0, "segm/AP50": 60.0, "segm/AP": 30.0}

#: environment variables that train() sets: Lightning's deterministic mode and seed_everything
SET_BY_TRAIN = ("CUBLAS_WORKSPACE_CONFIG", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")

CASES = [
    pytest.param("fcos", "pointins_small", id="fcos-point_templates"),
    pytest.param("fcos", "pointins_small_plus", id="fcos-box_templates"),
    pytest.param("retinanet", "pointins_small", id="retinanet-point_templates"),
    pytest.param("retinanet", "pointins_small_plus", id="retinanet-box_templates"),
]


@pytest.fixture
def restore_process_state():
    """Torch's process-wide flags and the environment variables that ``train`` sets, as the
    test found them: trainer.deterministic=true turns deterministic algorithms on for the
    whole process."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    env = {var: os.environ.get(var) for var in SET_BY_TRAIN}
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark
    for var, value in env.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


@pytest.mark.parametrize(("detector", "mask"), CASES)
def test_overfit_images_are_found_again(
    compose_cfg, tmp_path, restore_process_state, detector, mask
):
    cfg = compose_cfg([*GATE, f"detector={detector}", f"mask={mask}", f"paths.data_dir={tmp_path}"])
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        del cfg.hydra
    metrics = train_entry.train(cfg)
    scores = {name: round(metrics[name], 1) for name in FLOORS}
    short = {name: s for name, s in scores.items() if not s >= FLOORS[name]}  # NaN is short
    assert not short, f"below the floors {FLOORS}: {short} (all: {scores})"
