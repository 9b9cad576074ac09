"""model.init_from: a COCO-like checkpoint initialises a model of another class count."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

import eval as eval_entry
from pointins.engine.checkpoints import init_from_checkpoint
from pointins.engine.lit_module import PointINSModule

SMALL = [
    "experiment=shapes",
    "model.neck.out_channels=32",
    "model.detector.head.conv_dim=64",
    "model.detector.head.num_convs=1",
    "model.mask.K=8",
    "model.mask.mask_dim=16",
    "model.mask.head_convs=1",
]


@pytest.fixture
def build(compose_cfg):
    """build(num_classes, detector='fcos', init_from=None, seed=0) -> PointINSModule."""
    cfg = {det: compose_cfg([*SMALL, f"detector={det}"]) for det in ("fcos", "retinanet")}

    def _build(num_classes: int, detector: str = "fcos", init_from=None, seed: int = 0):
        torch.manual_seed(seed)
        c = cfg[detector]
        return instantiate(
            c.model,
            optim=c.optim,
            class_names=[f"c{i}" for i in range(num_classes)],
            init_from=None if init_from is None else str(init_from),
            _recursive_=False,
        )

    return _build


def save_lightning_like(module: PointINSModule, path: Path) -> Path:
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    return path


def test_all_but_the_class_logits_are_loaded(build, tmp_path: Path, caplog) -> None:
    coco = build(80, seed=1)
    ckpt = save_lightning_like(coco, tmp_path / "coco.ckpt")
    with caplog.at_level(logging.INFO, logger="pointins.engine.checkpoints"):
        city = build(8, init_from=ckpt, seed=2)
    fresh = build(8, seed=2)  # what init_from started from
    source, loaded, init = coco.state_dict(), city.state_dict(), fresh.state_dict()
    logits = {k for k in loaded if "cls_logits" in k}
    assert logits == {
        "model.detector.head.cls_logits.weight",
        "model.detector.head.cls_logits.bias",
    }
    for key in loaded:
        if key in logits:
            assert torch.equal(loaded[key], init[key]), key  # re-initialised for 8 classes
        else:
            assert torch.equal(loaded[key], source[key]), key
    changed = [k for k in loaded if k not in logits and not torch.equal(source[k], init[k])]
    assert {k.split(".")[1] for k in changed} == {"backbone", "neck", "detector", "mask"}
    towers = {k.split(".")[3] for k in changed if k.startswith("model.detector.head.")}
    assert {"cls_tower", "reg_tower"} <= towers  # each part really came from the file
    text = caplog.text
    assert f"init_from {ckpt}: loaded {len(loaded) - 2} tensors" in text
    assert "model.backbone" in text and "model.mask" in text
    assert "re-initialised model.detector.head.cls_logits.weight: shape (80, 64, 3, 3)" in text


def test_other_detector_loads_the_shared_parts_and_logs_the_rest(build, tmp_path, caplog):
    ckpt = save_lightning_like(build(80, detector="retinanet"), tmp_path / "retina.ckpt")
    fcos = build(8)
    with caplog.at_level(logging.INFO, logger="pointins.engine.checkpoints"):
        report = init_from_checkpoint(fcos, ckpt)
    assert any(k.startswith("model.backbone.") for k in report.loaded)
    assert "model.detector.head.centerness.weight" in report.missing  # FCOS only
    assert "keep their initialisation" in caplog.text


def test_unrelated_or_missing_file_is_a_clear_error(build, tmp_path: Path) -> None:
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3)}}, tmp_path / "other.ckpt")
    model = build(8)
    with pytest.raises(ValueError, match="none of its 1 tensors matches"):
        init_from_checkpoint(model, tmp_path / "other.ckpt")
    with pytest.raises(FileNotFoundError, match="model.init_from"):
        init_from_checkpoint(model, tmp_path / "absent.ckpt")


def test_a_fine_tuned_checkpoint_loads_without_its_init_file(build, tmp_path: Path) -> None:
    coco = save_lightning_like(build(80), tmp_path / "coco.ckpt")
    city = build(8, init_from=coco)
    ckpt = save_lightning_like(city, tmp_path / "city.ckpt")
    coco.unlink()  # eval.py needs only the fine-tuned checkpoint
    loaded = eval_entry.load_checkpoint(str(ckpt), [f"c{i}" for i in range(8)])
    for key, value in city.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
