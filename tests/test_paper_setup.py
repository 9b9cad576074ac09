"""The paper's configuration (``python train.py``: COCO 2017 layout, 80 classes, 800×1333,
ImageNet-initialised backbone with frozen BatchNorm) runs end to end on the embedded scenes
written in COCO's layout, and stops at once, before reading data, without weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from datamodules.synthetic import generate_shapes

ROOT = Path(__file__).resolve().parents[1]
# the architecture each backbone config loads (x101_dcn: x101's weights, convs made deformable)
ARCHITECTURES = {
    "r50": "resnet50",
    "r101": "resnet101",
    "x101": "resnext101_32x8d",
    "x101_dcn": "resnext101_32x8d",
}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("coco") / "coco", 4, 2, 0, 0, "coco2017")


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """No network and empty weight caches, whatever this machine has cached."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(tmp_path / "hf_hub"),
        TORCH_HOME=str(tmp_path / "torch_home"),
        WANDB_MODE="offline",
    )
    return env


def _train(args: list[str], tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv", *args],
        cwd=ROOT,
        env=_offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_offline_without_weights_stops_before_reading_data(coco_root, tmp_path):
    result = _train([f"data.root={coco_root}"], tmp_path, timeout=300)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "model.backbone.checkpoint_path=FILE" in output
    assert str(tmp_path / "hf_hub") in output  # the cache folder timm reads
    assert "Dataset classes" not in output  # the data was never read: it stopped at once


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory) -> dict[str, Path]:
    """One state-dict file per architecture, written as a user's download would be."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for arch in sorted(set(ARCHITECTURES.values())):
        path = folder / f"{arch}.pth"
        torch.save(timm.create_model(arch, pretrained=False).state_dict(), path)
        files[arch] = path
    return files


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(ARCHITECTURES))
@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_paper_configuration_runs_end_to_end(
    coco_root, weights_files, tmp_path, detector, backbone
):
    weights = weights_files[ARCHITECTURES[backbone]]
    result = _train(
        [
            f"data.root={coco_root}",
            f"model.backbone.checkpoint_path={weights}",
            f"detector={detector}",
            f"backbone={backbone}",
            "trainer.fast_dev_run=true",
            "data.num_workers=0",
        ],
        tmp_path,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert (
        f"Loading backbone weights for {ARCHITECTURES[backbone]}.tv_in1k from {weights}" in output
    )
    assert "Dataset classes (80)" in output  # COCO's 80 categories
    # the paper's batch of 16 at lr 5e-5, run here as 1 device x 2 images
    assert "lr 5e-05 -> 6.25e-06" in output
