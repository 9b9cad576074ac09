"""Resuming: a rerun in the same run folder continues from its newest checkpoint (mid-epoch
too, with the batches of an uninterrupted run); checkpoints are written atomically."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from pytorch_lightning.callbacks import ModelCheckpoint
from recorders import Interrupted, read_batches
from test_train import TINY

import train as train_entry
from pointins.engine.checkpoints import AtomicCheckpointIO, EpochAndStepCheckpoint
from pointins.engine.resume import LAST_CHECKPOINT, newest_checkpoint, plan_start
from pointins.engine.runner import build_trainer

ROOT = Path(__file__).resolve().parents[1]

# exact arithmetic on CPU: fp32 (the demo's bf16 autocast is not needed to test resuming)
FAST = [
    *TINY,
    "trainer.precision=32-true",
    "trainer.limit_val_batches=0",  # weights and batches are compared, not metrics
    "callbacks.best_checkpoint=null",
    "callbacks.last_checkpoint.every_n_train_steps=3",
]


@pytest.fixture
def train_in(compose_cfg, tmp_path):
    """train_in(run_dir, extra_overrides) -> metrics; trains in ``run_dir`` as
    ``python train.py hydra.run.dir=<run_dir>`` would."""

    def _train(run_dir: Path, extra: list[str] | None = None):
        cfg = compose_cfg([*FAST, f"paths.data_dir={tmp_path / 'data'}", *(extra or [])])
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
            del cfg.hydra
        return train_entry.train(cfg)

    return _train


def _record(out: Path) -> list[str]:
    target = "+callbacks.record._target_=recorders.RecordBatches"
    return [target, f"+callbacks.record.out_dir={out}"]


def _stop_at(step: int) -> list[str]:
    return ["+callbacks.stop._target_=recorders.InterruptAtStep", f"+callbacks.stop.step={step}"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_a_rerun_continues_mid_epoch_with_the_uninterrupted_batches(train_in, tmp_path, caplog):
    """4 steps an epoch, step checkpoints every 3 steps: killed after step 7, the rerun of
    the same command continues from step 6 (epoch 1, third batch) with the batches of an
    uninterrupted run, through DataLoader workers too, and ends with its weights, bit for
    bit."""
    train_in(tmp_path / "full", _record(tmp_path / "full_batches"))
    full = read_batches(tmp_path / "full_batches")

    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train_in(run, [*_record(tmp_path / "first"), *_stop_at(7)])
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (1, 6)

    with caplog.at_level("INFO", logger="pointins.engine.resume"):
        train_in(run, [*_record(tmp_path / "rerun"), "data.num_workers=2"])
    assert f"Resuming from {run / 'checkpoints' / 'last.ckpt'} (epoch 1, step 6)" in caplog.text
    first, rerun = read_batches(tmp_path / "first"), read_batches(tmp_path / "rerun")
    # the first run recorded step 7's batch, then stopped before training it
    assert len(full) == 8 and len(first) == 8 and len(rerun) == 2
    assert rerun[0] == full[6]  # epoch 1, batch index 2, at step 6
    assert first[:6] + rerun == full  # image ids, epochs, steps and batch indices

    expected, resumed = _weights(tmp_path / "full"), _weights(run)
    assert expected.keys() == resumed.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0, msg=key)


def test_fresh_folder_starts_fresh_and_resume_false_ignores_checkpoints(tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="pointins.engine.resume"):
        assert plan_start("auto", None, run).ckpt_path is None
    assert "Starting fresh: no checkpoint" in caplog.text
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"epoch": 2, "global_step": 77}, ckpt)
    start = plan_start("auto", None, run)
    assert (start.ckpt_path, start.continues_run) == (str(ckpt), True)
    caplog.clear()
    with caplog.at_level("INFO", logger="pointins.engine.resume"):
        start = plan_start(False, None, run)
    assert (start.ckpt_path, start.continues_run) == (None, False)
    assert "Starting fresh (resume=false)" in caplog.text


def test_the_run_folders_own_checkpoint_wins_over_ckpt_path(tmp_path, caplog):
    """A job started from another run's checkpoint and requeued continues its own run."""
    other = tmp_path / "other.ckpt"
    torch.save({"epoch": 5, "global_step": 500}, other)
    run = tmp_path / "run"
    start = plan_start("auto", str(other), run)
    assert (start.ckpt_path, start.continues_run) == (str(other), False)
    own = run / "checkpoints" / "last.ckpt"
    own.parent.mkdir(parents=True)
    torch.save({"epoch": 6, "global_step": 620}, own)
    with caplog.at_level("INFO", logger="pointins.engine.resume"):
        assert plan_start("auto", str(other), run).ckpt_path == str(own)
    assert "(epoch 6, step 620)" in caplog.text and "is not read" in caplog.text
    assert plan_start(False, str(other), run).ckpt_path == str(other)


def test_newest_checkpoint_includes_slurm_requeue_checkpoints(tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"x")
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"x")
    os.utime(last, (time.time() - 60, time.time() - 60))
    assert newest_checkpoint(tmp_path) == hpc
    os.utime(hpc, (time.time() - 120, time.time() - 120))
    assert newest_checkpoint(tmp_path) == last


def test_bad_values_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="resume='yes'"):
        plan_start("yes", None, tmp_path)
    with pytest.raises(FileNotFoundError, match="ckpt_path="):
        plan_start("auto", str(tmp_path / "missing.ckpt"), tmp_path)
    broken = tmp_path / "checkpoints" / "last.ckpt"
    broken.parent.mkdir()
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="resume=false"):
        plan_start("auto", None, tmp_path)


def test_the_default_trainer_saves_every_5000_steps_and_epoch_atomically(compose_cfg, tmp_path):
    cfg = compose_cfg(["trainer.accelerator=cpu", "logger=csv"])  # the COCO recipe's
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        del cfg.hydra
    trainer = build_trainer(cfg)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    (last,) = [c for c in trainer.callbacks if isinstance(c, EpochAndStepCheckpoint)]
    assert (last._every_n_train_steps, last.every_n_epochs) == (5000, 1)
    assert Path(last.dirpath) / "last.ckpt" == tmp_path / LAST_CHECKPOINT


def test_last_checkpoint_saves_every_n_steps_and_every_epoch():
    callback = EpochAndStepCheckpoint(every_n_train_steps=5000, dirpath="x", filename="last")
    assert isinstance(callback, ModelCheckpoint)
    assert (callback._every_n_train_steps, callback.every_n_epochs) == (5000, 1)
    assert EpochAndStepCheckpoint(every_n_train_steps=None)._every_n_train_steps == 0
    with pytest.raises(ValueError, match="every_n_train_steps"):
        EpochAndStepCheckpoint(every_n_train_steps=-1)


# ----------------------------------------------------------------- atomic checkpoint writes
# Saves step 1 whole, then blocks inside the save of step 2 at the phase named by argv[2]
# (announcing "blocked" on stdout) until the test kills it: the kill lands there, always.
WRITER = textwrap.dedent(
    """
    import io, os, sys, time, torch
    import pointins.engine.checkpoints as checkpoints
    from pointins.engine.checkpoints import AtomicCheckpointIO

    path, phase = sys.argv[1], sys.argv[2]
    io_ = AtomicCheckpointIO()
    io_.save_checkpoint({"step": 1, "w": torch.full((1000,), 1.0)}, path)

    def block(*args, **kwargs):
        print("blocked", flush=True)
        time.sleep(600)

    real_save = torch.save
    if phase == "mid_write":  # half the bytes of step 2 on disk
        def half_save(obj, f):
            buffer = io.BytesIO()
            real_save(obj, buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            block()
        torch.save = half_save
    elif phase == "before_rename":  # step 2 written and flushed, not yet renamed
        os.replace = block
    elif phase == "after_rename":  # renamed, the folder not yet fsynced
        checkpoints._fsync_dir = block
    io_.save_checkpoint({"step": 2, "w": torch.full((1000,), 2.0)}, path)
    """
)

# phase -> the step last.ckpt holds after the kill, and whether a temporary file is left
PHASES = {"mid_write": (1, True), "before_rename": (1, True), "after_rename": (2, False)}


def _check_whole(path: Path) -> int:
    saved = torch.load(path, weights_only=True)
    assert bool((saved["w"] == saved["step"]).all())
    return saved["step"]


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_writer_killed_inside_a_save_leaves_a_whole_checkpoint(tmp_path, phase):
    """SIGKILL a process inside its second checkpoint save, at each phase of the write: the
    ``last.ckpt`` left loads, whole (the first save's until the rename, then the second's),
    and a later save clears the temporary file the killed write left behind."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    path = tmp_path / "last.ckpt"
    command = [sys.executable, "-c", WRITER, str(path), phase]
    writer = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert writer.stdout.readline().strip() == "blocked", "the writer ended before the save"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    step, left_over = PHASES[phase]
    assert _check_whole(path) == step
    assert bool(list(tmp_path.glob(".last.ckpt.tmp-*"))) == left_over
    AtomicCheckpointIO().save_checkpoint({"step": 0, "w": torch.zeros(4)}, path)
    assert _check_whole(path) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    with pytest.raises(Exception, match="pickle"):
        io.save_checkpoint({"step": 2, "w": torch.ones(3), "bad": lambda: None}, path)
    assert _check_whole(path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------ show it
def _wandb_ids(run_dir: Path) -> set[str]:
    """Run ids of the offline W&B runs under ``<run dir>/wandb`` (``run-<id>.wandb``)."""
    return {f.stem.removeprefix("run-") for f in (run_dir / "wandb").glob("offline-run-*/*.wandb")}


def test_show_it_a_killed_job_rerun_with_the_same_command_continues(tmp_path):
    """Kill -9 a training job mid-epoch after a step checkpoint, rerun the identical
    command: one run folder, one W&B run id, and the weights of an uninterrupted run,
    bit for bit (CPU, fp32). Three trainings in subprocesses: about 30 s on 2 CPU cores."""
    data = tmp_path / "data"
    marker = tmp_path / "hanging"

    def command(run_dir: Path) -> list[str]:
        return [
            sys.executable,
            "train.py",
            *[o for o in TINY if not o.startswith("logger=")],
            f"paths.data_dir={data}",
            f"hydra.run.dir={run_dir}",
            "trainer.precision=32-true",
            "callbacks.last_checkpoint.every_n_train_steps=2",
            "logger=wandb",
            "logger.wandb.offline=true",
            # hangs after the given step when POINTINS_TEST_STOP_AT_STEP is set, else inert
            "+callbacks.stop._target_=recorders.InterruptAtStep",
            "+callbacks.stop.hang=true",
            f"+callbacks.stop.marker={marker}",
        ]

    # no W&B settings of this process: a wandb-core service that an earlier test started
    # here (WANDB_SERVICE) would still hold the killed job's run open
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PYTHONPATH"] = str(ROOT / "tests")
    env.pop("POINTINS_TEST_STOP_AT_STEP", None)
    subprocess.run(command(tmp_path / "reference"), cwd=ROOT, env=env, check=True, timeout=600)

    run = tmp_path / "run"
    job = subprocess.Popen(
        command(run),
        cwd=ROOT,
        env={**env, "POINTINS_TEST_STOP_AT_STEP": "3"},
        start_new_session=True,  # its own process group, as a cluster job: killed as one
    )
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert job.poll() is None, "the job ended before step 3"
        assert time.monotonic() < deadline, "step 3 not reached"
        time.sleep(0.5)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (0, 2)  # mid-epoch: 4 steps an epoch

    subprocess.run(command(run), cwd=ROOT, env=env, check=True, timeout=600)
    log = (run / "train.log").read_text()  # both attempts log into the one run folder
    assert "Starting fresh" in log
    assert f"Resuming from {run / 'checkpoints' / 'last.ckpt'} (epoch 0, step 2)" in log
    run_id = (run / "wandb_run_id").read_text().strip()
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2  # the killed part, the rerun
    assert _wandb_ids(run) == {run_id}

    expected, resumed = _weights(tmp_path / "reference"), _weights(run)
    assert expected.keys() == resumed.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0, msg=key)
