"""A model and data small enough to train a few steps on CPU in seconds, for the tests that
need a trained checkpoint (a few detections to predict, export and compare)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

CONF = Path(__file__).resolve().parents[1] / "conf"

#: the network's part of TINY (widths 32 and 16, one conv per tower and mask head)
TINY_MODEL = [
    "model.neck.out_channels=32",
    "model.detector.head.conv_dim=32",
    "model.detector.head.num_convs=1",
    "model.mask.K=8",
    "model.mask.mask_dim=16",
    "model.mask.head_convs=1",
]

#: the data's part of TINY: 8 train and 2 val images of 96 px, batches of 2, no workers
TINY_DATA = [
    "experiment=shapes",
    "data.num_train=8",
    "data.num_val=2",
    "data.train_scales=[96]",
    "data.max_size=128",
    "data.test_scale=96",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "data.num_workers=0",
]

#: the schedule's part of TINY: 2 epochs, validated after each, on the CPU in fp32 (the
#: same numbers whichever CPU runs them), CSV logs
TINY_TRAINER = [
    "optim.scheduler.warmup_steps=2",
    "optim.max_epochs=2",
    "trainer.check_val_every_n_epoch=1",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.devices=1",
    "logger=csv",
    "callbacks.progress_bar.refresh_rate=0",
]

TINY = [*TINY_DATA, *TINY_MODEL, *TINY_TRAINER]


def train_tiny(out: Path, data_dir: Path, extra: list[str] | None = None) -> Path:
    """Train the TINY recipe (``extra`` overrides on top) into ``out``; the checkpoint."""
    import train as train_entry

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*TINY, f"paths.data_dir={data_dir}", *(extra or [])],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        del cfg.hydra
    train_entry.train(cfg)
    return out / "checkpoints" / "last.ckpt"
