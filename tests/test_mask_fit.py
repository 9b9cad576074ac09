"""benchmarks.mask_fit: the checkpoint's network stays exactly as trained while a fresh mask
module learns on it, mask-module overrides reach the fresh module, and the command prints
its table."""

from __future__ import annotations

import pytest
import torch
from tiny import TINY

from benchmarks.config import compose_config
from benchmarks.mask_fit import fit_mask, fresh_model, main, thresholded_iou
from eval import load_checkpoint
from pointins.engine.runner import build_datamodule

#: TINY without the experiment (compose_config adds it)
OVERRIDES = [o for o in TINY if not o.startswith("experiment=")]


def test_thresholded_iou_counts_logits_from_zero():
    logits = torch.tensor([[[1.0, -1.0], [0.0, -1.0]], [[-1.0, -1.0], [-1.0, -1.0]]])
    targets = torch.tensor([[[1.0, 1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    # first: predicted {(0,0), (1,0)} of target {(0,0), (0,1), (1,0)}: 2/3; second: 0/1
    assert thresholded_iou(logits, targets).item() == pytest.approx(1 / 3)
    assert thresholded_iou(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4)).item() == 0.0


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
    ckpt, data = tiny_checkpoint("fcos")
    cfg = compose_config([*OVERRIDES, f"paths.data_dir={data}"])
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    return ckpt, data, datamodule


def test_only_the_fresh_mask_module_learns(setup):
    ckpt, _, datamodule = setup
    module = load_checkpoint(str(ckpt), datamodule.class_names)
    trained = {k: v.clone() for k, v in module.model.state_dict().items()}
    model = fresh_model(module)
    start = {k: v.clone() for k, v in model.mask.state_dict().items()}
    # a fresh module, not the checkpoint's
    assert any(not torch.equal(v, trained[f"mask.{k}"]) for k, v in start.items())
    batches = iter(list(datamodule.train_dataloader()) * 2)
    rows = fit_mask(model, batches, steps=4, lr=1e-2, warmup_steps=1, window=2)
    assert [step for step, _, _ in rows] == [2, 4]
    assert all(loss > 0 and 0 <= iou <= 1 for _, loss, iou in rows)
    after = model.state_dict()
    for key, value in trained.items():  # weights and BatchNorm statistics alike
        if not key.startswith("mask."):
            assert torch.equal(after[key], value), key
    assert any(not torch.equal(after[f"mask.{k}"], v) for k, v in start.items())


def test_mask_overrides_reach_the_fresh_module(setup):
    ckpt, _, datamodule = setup
    module = load_checkpoint(str(ckpt), datamodule.class_names)
    model = fresh_model(module, ["model.mask.kernel_size=5", "data.batch_size=3"])
    assert model.mask.template_branch.kernel_size == 5
    assert module.model.mask.template_branch.kernel_size == 3


def test_the_command_prints_the_fit_and_the_val_quality(setup, capsys):
    ckpt, data, _ = setup
    options = ["--steps", "2", "--window", "1", "--images", "2", "--score-thresh", "0"]
    text = main(["--ckpt", str(ckpt), *options, *OVERRIDES, f"paths.data_dir={data}"])
    assert "| 1 |" in text and "| 2 |" in text
    assert "2 val images" in text
    # the barely trained TINY detector may match no GT box; then the command says so
    assert "| all |" in text or "none overlaps a GT box" in text
    assert text in capsys.readouterr().out
