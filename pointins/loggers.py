"""Weights & Biases logging that works with and without a login or network."""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from pytorch_lightning.loggers import WandbLogger

log = logging.getLogger(__name__)


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


def finish_runs(loggers: Iterable[object]) -> None:
    """End the W&B run of each :class:`WandbLogger` that started one. Lightning leaves it
    open, and the next job of a multirun (same process) would log into it instead of
    writing its own run."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()
