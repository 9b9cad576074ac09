"""Training under SLURM: the launcher's job size read from the trainer config, and
Lightning's requeue on the time limit.

``conf/hydra/launcher/slurm.yaml`` books ``trainer.num_nodes`` nodes with
``trainer.devices`` tasks and GPUs each (``${slurm_count:...}``) and asks SLURM for
:data:`REQUEUE_SIGNAL` ``signal_delay_s`` seconds before the time limit. Inside the job,
the Trainer plugin from :func:`cluster_plugins` handles that signal: every rank joins in saving
``<run dir>/hpc_ckpt_<n>.ckpt`` (``n`` one more than the highest already there), then rank 0
runs ``scontrol requeue <job id>``. The requeued job reruns submitit's pickled launcher call
with the same overrides and the same resolved sweep directory, so it trains in the same run
directory and resumes from the newest checkpoint there.
"""

from __future__ import annotations

import signal

from omegaconf import DictConfig, OmegaConf

# The signal conf/hydra/launcher/slurm.yaml asks for (additional_parameters.signal). Not
# submitit's USR2: submitit's own handler takes that one, and it saves no checkpoint.
REQUEUE_SIGNAL = signal.SIGUSR1


def slurm_count(key: str, *, _root_: DictConfig) -> int:
    """``${slurm_count:trainer.devices}``: the config value at ``key``, which the SLURM
    launcher books as a number of tasks, GPUs or nodes; refused unless a whole number ≥ 1."""
    value = OmegaConf.select(_root_, key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(
        f"hydra/launcher=slurm books the SLURM job from {key} "
        f"(conf/hydra/launcher/slurm.yaml), which must be a whole number here, not {value!r}: "
        "SLURM books GPUs and nodes before the job starts, when `auto` cannot be known. "
        f"Give the number on the command line, e.g. `{key}=8`."
    )


OmegaConf.register_new_resolver("slurm_count", slurm_count, replace=True)


def cluster_plugins() -> list:
    """The Trainer's ``plugins``: inside a SLURM job step (``srun``, which is how submitit
    starts every task) a ``SLURMEnvironment`` that saves a checkpoint and requeues the job
    on :data:`REQUEUE_SIGNAL`; elsewhere none. An interactive allocation (job name ``bash``
    or ``interactive``) counts as elsewhere: Lightning starts the processes there."""
    # imported here: `import pointins` registers the resolver above without loading Lightning
    from lightning_fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=True, requeue_signal=REQUEUE_SIGNAL)]
