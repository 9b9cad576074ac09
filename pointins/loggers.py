"""Weights & Biases logging that works with and without a login or network."""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import string
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"  # in the run folder: the W&B run a resumed run logs into


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


def wandb_logger(offline: bool | str = "auto", **kwargs) -> WandbLogger:
    """A :class:`WandbLogger`; ``offline="auto"`` runs online when logged in, else offline
    (the run is written under ``save_dir/wandb/offline-run-*``; ``wandb sync`` uploads it)."""
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
    return WandbLogger(offline=offline, **kwargs)


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
