"""SLURM without a cluster: the launcher's job size from the trainer config, the sbatch
script submitit writes from it, the submitted job rerun (as after a requeue) in the same
run directory, and Lightning's requeue on the time-limit signal (a fake ``scontrol``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import submitit
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from hydra.utils import instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf.errors import InterpolationResolutionError
from torch import nn

from pointins.engine.slurm import REQUEUE_SIGNAL, cluster_plugins

CONF = Path(__file__).resolve().parents[1] / "conf"

SLURM_JOB = {  # one task of a one-node, one-task batch job started by srun
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "train",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "1",
    "SLURM_NODELIST": "node1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "MASTER_ADDR": "127.0.0.1",  # set here so that SLURMEnvironment's own setting is undone
    "MASTER_PORT": "29512",
}


def fake_binary(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def fake_bin(tmp_path, monkeypatch) -> Path:
    """A folder first on PATH for fake SLURM commands."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


# --------------------------------------------------------------------- launcher config
def test_job_size_comes_from_the_trainer(compose_cfg):
    cfg = compose_cfg(["hydra/launcher=slurm", "trainer.devices=8", "trainer.num_nodes=2"])
    launcher = cfg.hydra.launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (8, 8, 2)
    # SLURM warns with the signal the job's plugin handles (USR1 instead of submitit's USR2)
    assert launcher.additional_parameters.signal == f"USR1@{launcher.signal_delay_s}"
    assert REQUEUE_SIGNAL == signal.SIGUSR1


@pytest.mark.parametrize("devices", ["auto", "-1", "[0,1]"])
def test_devices_not_a_count_is_refused_naming_the_fix(compose_cfg, devices):
    cfg = compose_cfg(["hydra/launcher=slurm", f"trainer.devices={devices}"])
    with pytest.raises(InterpolationResolutionError, match=r"`trainer\.devices=8`"):
        instantiate(cfg.hydra.launcher)  # as Hydra builds the launcher for `-m`


@pytest.fixture
def hydra_singletons():
    """Hydra's global state (config store, HydraConfig, ...) as before the test: a launched
    job replaces it with the state pickled at submission."""
    saved = Singleton.get_state()
    yield
    Singleton.set_state(saved)
    GlobalHydra.instance().clear()


def test_sweep_jobs_book_the_trainers_size_and_rerun_in_their_run_dir(
    fake_bin, tmp_path, monkeypatch, hydra_singletons
):
    """`python train.py -m hydra/launcher=slurm trainer.devices=8 trainer.num_nodes=2
    seed=7,8` through Hydra's sweeper, the submitit launcher and submitit to the sbatch
    script; then one job's pickled call run twice, as SLURM runs it first and again after a
    requeue: the same config in the same run directory."""
    fake_binary(fake_bin, "srun", "exit 0")
    fake_binary(fake_bin, "sbatch", "echo Submitted batch job 4242")
    done = JobReturn(status=JobStatus.COMPLETED, _return_value=None)
    monkeypatch.setattr(submitit.SlurmJob, "results", lambda self: [done])  # no waiting
    command_line = ["trainer.devices=8", "trainer.num_nodes=2", "seed=7,8"]
    hydra_overrides = [
        "hydra/launcher=slurm",
        "hydra/job_logging=none",  # leave pytest's logging alone
        "hydra/hydra_logging=none",
        # microseconds: a job that composed its sweep directory anew would land elsewhere
        f"hydra.sweep.dir={tmp_path}/multirun/${{now:%H-%M-%S-%f}}",
    ]

    def task(job_cfg):
        return HydraConfig.get().runtime.output_dir, job_cfg.trainer.devices, job_cfg.seed

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=hydra_overrides + command_line[:2], return_hydra_config=True
        )
        HydraConfig.instance().set_config(cfg)
        context = HydraContext(
            config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks()
        )
        sweeper = Plugins.instance().instantiate_sweeper(
            hydra_context=context, task_function=task, config=cfg
        )
        sweeper.sweep(command_line)

    sweep_dir = Path(cfg.hydra.sweep.dir)
    folder = sweep_dir / ".submitit"
    (script,) = [path.read_text() for path in folder.glob(".submission_file_*.sh")]
    flags = ("nodes=2", "ntasks-per-node=8", "gpus-per-node=8", "signal=USR1@120", "array=0-1%2")
    for flag in flags:
        assert f"#SBATCH --{flag}\n" in script
    assert "#SBATCH --requeue\n" in script

    for name, value in {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "4243",
        "SLURM_ARRAY_JOB_ID": "4242",
        "SLURM_ARRAY_TASK_ID": "1",
    }.items():
        monkeypatch.setenv(name, value)
    # submitit's _submit, in the first run and in the requeued one, loads this pickle
    job = folder / "4242_1" / "4242_1_submitted.pkl"
    runs = [submitit.helpers.DelayedSubmission.load(job).result().return_value for _ in "12"]
    assert runs[0] == runs[1]
    run_dir, devices, seed = runs[0]
    assert (devices, seed) == (8, 8)
    assert Path(run_dir).parent == sweep_dir and "seed=8" in Path(run_dir).name


# ---------------------------------------------------------------- requeue on the signal
class TinyModule(pl.LightningModule):
    """A linear fit that sends itself ``signal_at`` (step, signal), as SLURM would."""

    def __init__(self, signal_at: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.signal_at = signal_at
        self.started_at: int | None = None

    def on_train_start(self) -> None:
        self.started_at = self.global_step

    def training_step(self, batch, batch_idx):
        if self.signal_at is not None and self.global_step == self.signal_at[0]:
            signum = self.signal_at[1]
            # the default action of SIGUSR1 ends the process: only send it to a handler
            assert signal.getsignal(signum) not in (None, signal.SIG_DFL), "no handler"
            os.kill(os.getpid(), signum)
        (x,) = batch
        return self.layer(x).pow(2).mean()

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(8, 2))
        return torch.utils.data.DataLoader(data, batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tiny_trainer(root: Path, max_steps: int) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        plugins=cluster_plugins(),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_outside_slurm_no_plugin(monkeypatch):
    for name in SLURM_JOB:
        monkeypatch.delenv(name, raising=False)
    assert cluster_plugins() == []
    for name, value in SLURM_JOB.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # `srun --pty bash`: Lightning starts ranks
    assert cluster_plugins() == []


@pytest.fixture
def submitit_signal_handlers(tmp_path, monkeypatch):
    """The handlers submitit's _submit sets before it runs the job (USR2, TERM, CONT),
    pytest's own restored afterwards."""
    signums = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGCONT)
    saved = {signum: signal.getsignal(signum) for signum in signums}
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    job = submitit.helpers.DelayedSubmission(print)
    submitit.JobEnvironment()._handle_signals(submitit.core.utils.JobPaths(tmp_path), job)
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before")
def test_signal_saves_a_checkpoint_and_requeues_and_the_job_resumes(
    fake_bin, tmp_path, monkeypatch, submitit_signal_handlers
):
    for name, value in SLURM_JOB.items():
        monkeypatch.setenv(name, value)
    calls = tmp_path / "scontrol_calls"
    fake_binary(fake_bin, "scontrol", f'echo "$@" >> {calls}')
    (plugin,) = cluster_plugins()
    assert isinstance(plugin, SLURMEnvironment)
    assert plugin.auto_requeue and plugin.requeue_signal == REQUEUE_SIGNAL

    run_dir = tmp_path / "run"
    tiny_trainer(run_dir, max_steps=8).fit(TinyModule(signal_at=(3, REQUEUE_SIGNAL)))

    assert calls.read_text().split("\n") == ["requeue 4242", ""]
    saved = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=True)
    assert saved["global_step"] == 3  # the step the signal arrived in
    assert signal.getsignal(REQUEUE_SIGNAL) is signal.SIG_DFL  # Lightning's, removed after fit

    # the requeued job: ckpt_path=None under SLURM and Lightning picks the hpc checkpoint
    resumed = TinyModule()
    tiny_trainer(run_dir, max_steps=8).fit(resumed)
    assert resumed.started_at == 3
