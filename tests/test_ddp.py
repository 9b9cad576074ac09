"""Training on two processes (DDP, gloo on CPU): the ranks split one global order of
orientation-grouped batches, and the run's evaluation equals one process's of its
checkpoint."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from recorders import read_batches
from test_train import TINY

from pointins.engine.runner import build_trainer

ROOT = Path(__file__).resolve().parents[1]
DATA = [o for o in TINY if o.split("=")[0].split(".")[0] in ("experiment", "data")]
# one image per evaluation batch: a batch pads its images to a common size, which moves
# the predictions slightly, so both sides batch alike; score threshold 0: many predictions
SAME_EVAL = ["data.val_batch_size=1", "model.detector.postprocess.score_thresh=0.0"]


def _python(args: list[str], env_extra: dict[str, str], timeout: int) -> None:
    # one thread per process: DDP's processes get one each on 2 cores, and the same
    # summation order makes one process's evaluation bit-identical to the run's
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests"), **env_extra}
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def _kept_train_ids(data_dir: Path) -> set[int]:
    """Training images with a non-crowd instance (the others are dropped by default)."""
    ann = json.loads((data_dir / "shapes/annotations/instances_train.json").read_text())
    return {a["image_id"] for a in ann["annotations"] if not a.get("iscrowd", 0)}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_two_processes_split_the_epoch_and_evaluate_like_one(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    record = ["+callbacks.record._target_=recorders.RecordBatches"]
    record.append(f"+callbacks.record.out_dir={tmp_path / 'batches'}")
    train = [
        "train.py",
        *TINY,
        *SAME_EVAL,
        f"paths.data_dir={data}",
        f"hydra.run.dir={run}",
        "trainer.precision=32-true",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        *record,
    ]
    _python(train, {}, timeout=400)

    ranks = [read_batches(tmp_path / "batches", rank) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) > 0  # every rank steps equally often
    orders = []
    for epoch in (0, 1):
        batches = [[b for b in rank if b["epoch"] == epoch] for rank in ranks]
        ids = [[i for b in rank for i in b["image_ids"]] for rank in batches]
        assert not set(ids[0]) & set(ids[1]), f"epoch {epoch}: ranks share images"
        assert sorted(ids[0] + ids[1]) == sorted(_kept_train_ids(data)), f"epoch {epoch}"
        for b in batches[0] + batches[1]:
            assert len(set(b["landscape"])) == 1, f"mixed orientations in {b}"
        orders.append(ids)
    assert orders[0] != orders[1]  # a new order every epoch

    out = tmp_path / "eval"
    ckpt = run / "checkpoints" / "last.ckpt"
    evaluate = ["eval.py", *DATA, *SAME_EVAL, f"paths.data_dir={data}", f"ckpt_path={ckpt}"]
    evaluate += [f"hydra.run.dir={out}", "trainer.accelerator=cpu", "trainer.devices=1"]
    evaluate += ["trainer.precision=32-true", "logger=csv"]
    _python(evaluate, {}, timeout=200)
    trained = json.loads((run / "metrics.json").read_text())
    evaluated = json.loads((out / "metrics.json").read_text())
    for key in ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50", "segm/APl"):
        assert _same(trained[key], evaluated[key]), key
    for predictions in ("bbox.json", "segm.json"):  # both ranks evaluated rank 0's weights
        by_run = json.loads((run / predictions).read_text())
        assert by_run, "no predictions to compare"
        assert by_run == json.loads((out / predictions).read_text()), predictions


def test_lightnings_sampler_wrapper_is_refused_on_several_processes(compose_cfg, tmp_path):
    cfg = compose_cfg([*TINY, "trainer.devices=2", "trainer.strategy=ddp"])
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.trainer.use_distributed_sampler = True
        del cfg.hydra
    with pytest.raises(ValueError, match="trainer.use_distributed_sampler=false"):
        build_trainer(cfg)
