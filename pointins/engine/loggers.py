"""Weights & Biases logging that works with and without a login or network."""

from __future__ import annotations

import fnmatch
import logging
import netrc
import os
import secrets
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"  # in the run folder: the W&B run a resumed run logs into
GROUP_FILE = "wandb_group"  # in the run folder: the W&B group its evaluations join
AP_METRICS = ("bbox/AP*", "segm/AP*", "cityscapes/AP*")  # summary: best value, not last
FINAL_PREFIX = "final/"  # the metrics of a run's last evaluation


def wandb_logged_in() -> bool:
    """Whether W&B credentials exist: ``WANDB_API_KEY`` or a ``.netrc`` entry for the
    W&B host (``WANDB_BASE_URL``, default ``https://api.wandb.ai``), as ``wandb login``
    writes it. ``WANDB_MODE=offline``/``disabled`` counts as not logged in."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


class PointINSWandbLogger(WandbLogger):
    """Lightning's W&B logger, plus: an AP key (:data:`AP_METRICS`) is defined in W&B when
    first logged, with its best (max) value as its run summary and Lightning's
    ``trainer/global_step`` as its step axis (defined by name: a key matching both
    Lightning's ``*`` glob and an AP glob would get either definition); with
    ``log_model=true`` the artifact alias ``best`` ends on the monitored best checkpoint."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._defined: set[str] = set()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        new = [k for k in metrics if k not in self._defined and is_ap_metric(k)]
        for key in new:
            self.experiment.define_metric(
                key, step_metric="trainer/global_step", step_sync=True, summary="max"
            )
        self._defined.update(new)
        super().log_metrics(metrics, step)

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        # with log_model=true the checkpoints are logged at the end, callback by callback, and
        # each callback's own best gets the "best" alias (the unmonitored last.ckpt too):
        # the monitored callbacks go last, so that the alias ends on the monitored best
        self._checkpoint_callbacks = dict(
            sorted(self._checkpoint_callbacks.items(), key=lambda kv: kv[1].monitor is not None)
        )


def is_ap_metric(key: str) -> bool:
    """Whether ``key`` is an AP metric (:data:`AP_METRICS`), whose best value counts."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in AP_METRICS)


def wandb_logger(offline: bool | str = "auto", **kwargs) -> PointINSWandbLogger:
    """A :class:`PointINSWandbLogger`; ``offline="auto"`` runs online when logged in, else
    offline (the run is written under ``save_dir/wandb/offline-run-*``; ``wandb sync``
    uploads it, with the checkpoint artifacts of ``log_model=true``)."""
    if offline == "auto":
        offline = not wandb_logged_in()
    elif not isinstance(offline, bool):
        raise ValueError(f"logger.wandb.offline={offline!r}: choose auto, true or false")
    if offline:
        log.info(
            "W&B: no login found, writing an offline run under %s/wandb; upload it later with "
            "`wandb sync %s/wandb/offline-run-*` (or log in with `wandb login` first)",
            kwargs.get("save_dir", "."),
            kwargs.get("save_dir", "."),
        )
    if not kwargs.get("name"):
        kwargs["name"] = None  # W&B picks a name (a run without overrides has "")
    if offline and kwargs.get("log_model"):
        # Lightning refuses log_model with offline=True; wandb.init(mode="offline") records
        # the checkpoint artifacts in the offline run, and `wandb sync` uploads them with it
        return PointINSWandbLogger(offline=False, mode="offline", **kwargs)
    return PointINSWandbLogger(offline=offline, **kwargs)


def wandb_run_id(run_dir: str | Path, continues_run: bool) -> str | None:
    """The W&B run id of the training run in ``run_dir``.

    A run that continues from its folder's checkpoint keeps the id stored in
    ``<run_dir>/wandb_run_id`` (passed with ``resume="allow"``, W&B appends to that run);
    otherwise a new id is drawn and stored there. Only rank 0 logs to W&B: other
    processes get None and leave the file alone.
    """
    if rank_zero_only.rank != 0:
        return None
    file = Path(run_dir) / RUN_ID_FILE
    if continues_run and file.is_file() and (stored := file.read_text().strip()):
        log.info("W&B: continuing run %s (id from %s)", stored, file)
        return stored
    alphabet = string.ascii_lowercase + string.digits  # W&B's own id alphabet
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(run_id + "\n")
    log.info("W&B: new run %s (id stored in %s)", run_id, file)
    return run_id


def finish_runs(loggers: Iterable[object]) -> None:
    """End the W&B run of each :class:`WandbLogger` that started one. Lightning leaves it
    open, and the next job of a multirun (same process) would log into it instead of
    writing its own run."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


@dataclass(frozen=True)
class RunIdentity:
    """How a run is found in W&B: display name, group, tags and job type."""

    name: str
    group: str
    tags: tuple[str, ...]
    job_type: str


def _short_override(override: str) -> str:
    """``model.mask.iz_parts=[io,offset]`` -> ``iz_parts=[io,offset]`` (``+``/``~`` dropped)."""
    key, sep, value = override.partition("=")
    return f"{key.lstrip('+~').rsplit('.', 1)[-1]}{sep}{value}"


def _override_key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def is_smoke_run(trainer_cfg: Mapping) -> bool:
    """Whether the trainer settings shorten the run (a check, not a result)."""
    limits = (trainer_cfg.get("limit_train_batches"), trainer_cfg.get("limit_val_batches"))
    return (
        (trainer_cfg.get("max_steps") or -1) > 0
        or bool(trainer_cfg.get("fast_dev_run"))
        or any(limit is not None and limit != 1.0 for limit in limits)
    )


def run_identity(cfg: Mapping, hydra_cfg: Mapping | None, job_type: str) -> RunIdentity:
    """The W&B name, group and tags of a run, from its config and Hydra's view of the launch.

    name: the experiment (or ``task_name``; ``eval`` before it for an evaluation) and the
    command-line overrides, keys shortened to their last part, without ``hydra.*`` and the
    keys the run folder names leave out (``hydra.job.config.override_dirname.exclude_keys``).
    group: in a multirun the ablation (or ``task_name``) and the launch time read from
    ``hydra.sweep.dir`` (``multirun/<task>/<date>/<time>``), as :func:`pointins.tables.wandb_group`
    names it, so that two launches never share a group; a single run's group is its
    experiment (or ``task_name``).
    tags: ablation, experiment, detector, backbone and dataset choices, and ``smoke`` when
    the trainer settings shorten the run.
    """
    task = cfg.get("task_name") or job_type
    choices = dict((hydra_cfg or {}).get("runtime", {}).get("choices", {}) or {})
    experiment, ablation = choices.get("experiment"), choices.get("ablation")
    label = experiment or task
    overrides = list((hydra_cfg or {}).get("overrides", {}).get("task", []) or [])
    job_cfg = (hydra_cfg or {}).get("job", {}).get("config", {}) or {}
    excluded = set(job_cfg.get("override_dirname", {}).get("exclude_keys", []) or [])
    shown = [
        _short_override(o)
        for o in overrides
        if _override_key(o) not in excluded and not _override_key(o).startswith("hydra.")
    ]
    name = " ".join([label, *shown])
    if job_type != "train" and label != job_type:
        name = f"{job_type} {name}"  # "eval shapes": not the training run's name
    if hydra_cfg is not None and str(hydra_cfg.get("mode")) == "RunMode.MULTIRUN":
        date, time = Path(str(hydra_cfg["sweep"]["dir"])).parts[-2:]
        sweep = ablation or str(task).removeprefix("ablation_")  # as pointins.tables names it
        group = f"{sweep} {date} {time.replace('-', ':')}"
    else:
        group = label
    values = [ablation, experiment, choices.get("detector"), choices.get("backbone")]
    values.append(choices.get("data"))
    if is_smoke_run(cfg.get("trainer") or {}):
        values.append("smoke")
    tags = tuple(dict.fromkeys(v for v in values if v))  # in order, without repeats
    return RunIdentity(name=name, group=group, tags=tags, job_type=job_type)


def identity_kwargs(identity: RunIdentity, wandb_cfg: Mapping) -> dict:
    """The identity as :func:`wandb_logger` arguments; a value set in ``logger.wandb``
    (``logger.wandb.group=mine``) wins over the computed one."""
    computed = {
        "name": identity.name,
        "group": identity.group,
        "tags": list(identity.tags),
        "job_type": identity.job_type,
    }
    return {k: v for k, v in computed.items() if wandb_cfg.get(k) is None}


def log_final(loggers: Iterable[object], metrics: Mapping[str, float], step: int) -> None:
    """Log ``metrics`` (a trainer's ``callback_metrics`` after its last evaluation) under
    ``final/<key>`` to each W&B run; training losses (``train/*``) are left out."""
    final = {
        f"{FINAL_PREFIX}{k}": float(v) for k, v in metrics.items() if not k.startswith("train/")
    }
    for logger in loggers:
        if isinstance(logger, WandbLogger) and final:
            logger.log_metrics(final, step=step)


def store_group(run_dir: str | Path, group: str) -> None:
    """Write the W&B group to ``<run_dir>/wandb_group`` (rank 0), for ``eval.py`` to join."""
    if rank_zero_only.rank == 0:
        file = Path(run_dir) / GROUP_FILE
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(group + "\n")


@dataclass(frozen=True)
class TrainingRun:
    """The training run a checkpoint comes from, as its run folder records it."""

    dir: str | None
    wandb_id: str | None
    wandb_group: str | None


def training_run(ckpt_path: str | Path) -> TrainingRun:
    """The run folder of ``<run dir>/checkpoints/<file>.ckpt`` and the W&B id and group
    stored there (None where the checkpoint is not in a run folder or a file is missing)."""
    ckpt = Path(ckpt_path).expanduser()
    if ckpt.parent.name != "checkpoints":
        return TrainingRun(None, None, None)
    run_dir = ckpt.parent.parent

    def read(name: str) -> str | None:
        file = run_dir / name
        return (file.read_text().strip() or None) if file.is_file() else None

    return TrainingRun(str(run_dir), read(RUN_ID_FILE), read(GROUP_FILE))
