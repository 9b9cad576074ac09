"""Progress for batch jobs: the plain lines of ProgressLines on a tiny fit, and the choice
between them and the tqdm bar by whether stdout is a terminal; the instance masks of the
validation panel."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import wandb
from pytorch_lightning.callbacks import TQDMProgressBar
from recorders import RecordingWandbLogger
from torch import nn

from pointins.engine import callbacks as callbacks_module
from pointins.engine.callbacks import (
    MAX_PANEL_INSTANCES,
    ProgressLines,
    ValidationImages,
    instance_mask_data,
    progress_bar,
)

TRAIN_LINE = re.compile(
    r"\[train\] iter (?P<step>\d+)/(?P<total>\d+)  eta (?P<eta>\d+:\d\d:\d\d)"
    r"  lr (?P<lr>\S+)  loss (?P<loss>\S+) \(cls (?P<cls>\S+) box_reg (?P<box_reg>\S+)\)"
    r"  data (?P<data>\d+\.\d{3})s  step (?P<time>\d+\.\d{3})s$"
)


class FakeClock:
    """``time.perf_counter`` of :mod:`pointins.engine.callbacks` in these tests: it advances only
    where a test says so, so the timings the lines print do not depend on the machine."""

    now = 0.0

    @classmethod
    def perf_counter(cls) -> float:
        return cls.now


CLOCK = FakeClock


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    monkeypatch.setattr(callbacks_module, "time", FakeClock)
    FakeClock.now = 0.0


class TinyDetector(pl.LightningModule):
    """Logs a total and two terms as PointINSModule does; validation takes ``val_seconds``
    of the fake clock a batch and an evaluation-step fit."""

    def __init__(self, val_seconds: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.val_seconds = val_seconds
        self.logged: dict[int, float] = {}  # global step at the batch -> its logged loss

    def training_step(self, batch, batch_idx):
        (x,) = batch
        out = self.layer(x)
        losses = {"loss_cls": out[:, 0].pow(2).mean(), "loss_box_reg": out[:, 1].abs().mean()}
        loss = sum(losses.values())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(x))
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(x))
        self.logged[self.global_step] = float(loss.detach())
        return loss

    def validation_step(self, batch, batch_idx):
        CLOCK.now += self.val_seconds

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(8, 2))
        return torch.utils.data.DataLoader(data, batch_size=2)

    def val_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(4, 2))
        return torch.utils.data.DataLoader(data, batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(model: pl.LightningModule, **trainer_args) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        callbacks=[ProgressLines()],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_args,
    )
    trainer.fit(model)


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pointins.engine.callbacks"]


def test_a_line_every_n_steps_with_that_steps_losses(caplog):
    caplog.set_level(logging.INFO, logger="pointins.engine.callbacks")
    model = TinyDetector()
    # 4 batches an epoch: the run stops in the second, after the epoch-end validation
    fit(model, max_steps=6, log_every_n_steps=2, limit_val_batches=0)
    train = [TRAIN_LINE.match(line) for line in lines(caplog) if line.startswith("[train] iter")]
    assert all(train), lines(caplog)
    assert [(m["step"], m["total"]) for m in train] == [("2", "6"), ("4", "6"), ("6", "6")]
    assert train[-1]["eta"] == "0:00:00"
    for m in train:
        assert m["lr"] == "5.00e-02"
        # the loss of the batch that made the step, as the loggers record it
        assert float(m["loss"]) == pytest.approx(model.logged[int(m["step"]) - 1], rel=1e-3)
        assert float(m["loss"]) == pytest.approx(float(m["cls"]) + float(m["box_reg"]), rel=1e-2)
    assert lines(caplog)[-1].startswith("[train] done: iter 6 in ")


def test_iter_counts_optimiser_steps(caplog):
    caplog.set_level(logging.INFO, logger="pointins.engine.callbacks")
    model = TinyDetector()
    fit(model, max_steps=6, log_every_n_steps=2, accumulate_grad_batches=2, limit_val_batches=0)
    iters = [line.split()[2] for line in lines(caplog) if line.startswith("[train] iter")]
    assert iters == ["2/6", "4/6", "6/6"]


def test_validation_within_an_epoch_is_not_data_time(caplog):
    caplog.set_level(logging.INFO, logger="pointins.engine.callbacks")
    # validation (2 batches x 0.15 s) after batch 2 of 4, then batch 3 ends the window
    fit(TinyDetector(val_seconds=0.15), max_steps=3, log_every_n_steps=3, val_check_interval=2)
    out = lines(caplog)
    val = out.index("[val] 2 batches at iter 2")
    assert re.fullmatch(r"\[val\] done in 0:00:0\d", out[val + 1])
    line = TRAIN_LINE.match(out[val + 2])
    # counted as the third batch's wait, the validation would make data 0.1 s a batch
    assert line["step"] == "3" and float(line["data"]) == 0.0


def test_only_rank_zero_prints(caplog):
    caplog.set_level(logging.INFO, logger="pointins.engine.callbacks")
    progress = ProgressLines()
    progress.disable()  # what ProgressBar.setup does on ranks other than 0
    pl.Trainer(
        accelerator="cpu",
        callbacks=[progress],
        max_steps=2,
        log_every_n_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
    ).fit(TinyDetector())
    assert lines(caplog) == []


class FakeStdout:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize(
    ("tty", "refresh_rate", "kind"),
    [
        (True, 10, TQDMProgressBar),
        (False, 10, ProgressLines),
        (False, 0, TQDMProgressBar),  # off: a disabled bar, as before
        (True, 0, TQDMProgressBar),
    ],
)
def test_progress_bar_follows_stdout(monkeypatch, tty, refresh_rate, kind):
    monkeypatch.setattr("sys.stdout", FakeStdout(tty))
    bar = progress_bar(refresh_rate=refresh_rate)
    assert type(bar) is kind
    if kind is TQDMProgressBar:
        assert bar.refresh_rate == refresh_rate and bar.is_enabled == (refresh_rate > 0)


def test_touching_same_class_instances_keep_their_own_ids():
    """Two 'car' predictions side by side: two ids in the logged mask, each with its own
    class and score caption; where masks overlap the first (highest score) is on top."""
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:5, 0:4] = True  # car 0.9
    masks[1, 1:5, 4:8] = True  # car 0.8, touching the first
    masks[2, 0:3, 2:6] = True  # person 0.5, under both cars where they overlap
    data = instance_mask_data(masks, ["car 0.90", "car 0.80", "person 0.50"])
    ids = data["mask_data"]
    assert ids.shape == (6, 8) and ids.dtype == np.uint8
    assert (ids[1:5, 0:4] == 1).all() and (ids[1:5, 4:8] == 2).all()
    assert (ids[0, 2:6] == 3).all()  # the person shows where no car covers it
    assert set(np.unique(ids).tolist()) == {0, 1, 2, 3}
    assert data["class_labels"] == {1: "car 0.90", 2: "car 0.80", 3: "person 0.50"}
    wandb.Image(np.zeros((6, 8, 3), np.uint8), masks={"predictions": data})  # W&B accepts it


def test_instance_mask_data_without_instances_and_beyond_the_cap():
    empty = instance_mask_data(torch.zeros(0, 4, 5, dtype=torch.bool), [])
    assert empty["class_labels"] == {} and not empty["mask_data"].any()
    many = torch.zeros(MAX_PANEL_INSTANCES + 3, 16, 16, dtype=torch.bool)
    many.view(len(many), -1)[torch.arange(len(many)), torch.arange(len(many))] = True
    data = instance_mask_data(many, [f"car {i}" for i in range(len(many))])
    assert int(data["mask_data"].max()) == MAX_PANEL_INSTANCES
    assert len(data["class_labels"]) == MAX_PANEL_INSTANCES


def test_validation_panel_logs_instances_with_scores_and_ground_truth():
    """Two touching ground-truth cars and their two predictions: both layers of the logged
    image keep two ids; a prediction under the score threshold is not drawn."""
    gt_masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    gt_masks[0, :, :4], gt_masks[1, :, 4:] = True, True
    boxes = torch.tensor([[0.0, 0.0, 4.0, 6.0], [4.0, 0.0, 8.0, 6.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 1]), "masks": gt_masks}
    prediction = {
        "boxes": torch.cat([boxes, boxes[:1]]),
        "scores": torch.tensor([0.6, 0.9, 0.1]),
        "labels": torch.tensor([1, 1, 0]),
        "masks": torch.cat([gt_masks, gt_masks[:1]]),
    }
    batch = SimpleNamespace(images=torch.zeros(1, 3, 6, 8), image_sizes=[(6, 8)], targets=[target])
    datamodule = SimpleNamespace(
        val_dataset=[None] * 3, collate=lambda samples: batch, mean=[0.5] * 3, std=[0.2] * 3
    )
    module = SimpleNamespace(
        model=SimpleNamespace(predict=lambda images, sizes, orig: [prediction]),
        device=torch.device("cpu"),
        class_names=["person", "car"],
    )
    recorder = RecordingWandbLogger()
    trainer = SimpleNamespace(
        loggers=[recorder], sanity_checking=False, is_global_zero=True,
        datamodule=datamodule, global_step=7,
    )  # fmt: skip
    ValidationImages(num_images=1, score_thresh=0.3).on_validation_epoch_end(trainer, module)
    (logged,) = recorder.logged
    (image,) = logged["val/predictions"]
    masks = image._masks
    pred = masks["predictions"]._val
    gt = masks["ground_truth"]._val
    assert pred["class_labels"] == {1: "car 0.90", 2: "car 0.60"}  # highest score first
    assert (pred["mask_data"][:, 4:] == 1).all() and (pred["mask_data"][:, :4] == 2).all()
    assert gt["class_labels"] == {1: "car", 2: "car"}
    assert set(np.unique(gt["mask_data"]).tolist()) == {1, 2}
    assert logged["trainer/global_step"] == 7
