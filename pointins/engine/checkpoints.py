"""Checkpoint files: when they are written, how, and how another model starts from one.

:class:`EpochAndStepCheckpoint` saves ``last.ckpt`` at the end of every epoch and every N
optimiser steps. :class:`AtomicCheckpointIO` (the Trainer's checkpoint plugin) writes each
checkpoint to a temporary file in the target's folder, syncs it to disk and renames it
over the target: a process killed while writing leaves the previous ``last.ckpt`` whole.

:func:`init_from_checkpoint` initialises a model from another run's checkpoint
(``model.init_from``), e.g. COCO → Cityscapes. Every tensor whose name and shape match is
loaded: backbone, FPN, detector towers, box branch and mask module of a checkpoint trained
with the same architecture. Tensors of another shape (the class logits, when the class
count differs) keep this model's fresh initialisation, i.e. they are re-initialised.
Loaded, skipped and missing tensors are logged.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins import TorchCheckpointIO
from torch import Tensor, nn

log = logging.getLogger(__name__)


class EpochAndStepCheckpoint(ModelCheckpoint):
    """A :class:`ModelCheckpoint` with two triggers: the end of every ``every_n_epochs``
    epochs and every ``every_n_train_steps`` optimiser steps (None or 0: epochs only).

    Lightning's own accepts one trigger; both of its save paths (training batch end and
    epoch end) read the two intervals set here, so a step save and an epoch save write the
    same file, and a step that ends an epoch is saved once.
    """

    def __init__(
        self, every_n_train_steps: int | None = None, every_n_epochs: int = 1, **kwargs: Any
    ) -> None:
        steps = int(every_n_train_steps or 0)
        if steps < 0 or every_n_epochs < 1:
            raise ValueError(
                f"callbacks.last_checkpoint: every_n_train_steps={every_n_train_steps} and "
                f"every_n_epochs={every_n_epochs}; give a step interval >= 1 (null: at epoch "
                "ends only) and an epoch interval >= 1"
            )
        super().__init__(every_n_epochs=every_n_epochs, **kwargs)
        self._every_n_train_steps = steps  # read by ModelCheckpoint.on_train_batch_end


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, writing local files atomically.

    The checkpoint goes to ``.<name>.tmp-*`` beside the target, is flushed and fsynced, and
    replaces the target with one ``os.replace``; the folder is then fsynced so the rename
    survives a power cut. Temporary files that a killed writer left behind for the same
    target are removed before writing. Remote paths (``s3://`` and the like) are written
    by :class:`TorchCheckpointIO`.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local(path):  # fsspec's writers
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{target.name}.tmp-"
        for stale in target.parent.glob(f"{prefix}*"):  # one writer per target: not ours now
            stale.unlink(missing_ok=True)
        tmp = target.parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
        # os.open with mode 0o666 minus the umask: the permissions torch.save(path) gives
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)


def _is_local(path: str | Path) -> bool:
    """A plain file-system path (not a URL such as ``s3://bucket/last.ckpt``)."""
    return "://" not in str(path)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not supported on every OS and file system)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class InitReport:
    """What :func:`init_from_checkpoint` did, by tensor name."""

    loaded: list[str]
    reinitialised: list[str]  # in both, with another shape: kept this model's initialisation
    unexpected: list[str]  # only in the checkpoint
    missing: list[str]  # only in the model: kept this model's initialisation


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The weights of a Lightning checkpoint (``state_dict``) or of a plain state dict file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"model.init_from={str(file)!r} does not exist")
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"model.init_from={str(file)!r} holds no state dict (a Lightning checkpoint or "
            "torch.save(module.state_dict(), ...))"
        )
    return state


def init_from_checkpoint(module: nn.Module, path: str | Path) -> InitReport:
    """Load the tensors of ``path`` whose name and shape match ``module``'s, and log the rest.

    Raises ValueError when no tensor matches (the checkpoint belongs to another model).
    """
    state = read_state_dict(path)
    own = module.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not loaded:
        raise ValueError(
            f"model.init_from={str(path)!r}: none of its {len(state)} tensors matches this model "
            f"by name and shape (e.g. checkpoint {next(iter(state), None)!r}, model "
            f"{next(iter(own), None)!r}); initialise from a checkpoint of the same architecture"
        )
    module.load_state_dict(loaded, strict=False)
    report = InitReport(
        loaded=sorted(loaded),
        reinitialised=sorted(k for k in state if k in own and k not in loaded),
        unexpected=sorted(k for k in state if k not in own),
        missing=sorted(k for k in own if k not in state),
    )
    by_part = Counter(_part(k) for k in report.loaded)
    log.info(
        "init_from %s: loaded %d tensors (%s)",
        path,
        len(report.loaded),
        ", ".join(f"{part} {n}" for part, n in sorted(by_part.items())),
    )
    for key in report.reinitialised:
        log.info(
            "init_from %s: re-initialised %s: shape %s in the checkpoint, %s here",
            path,
            key,
            tuple(state[key].shape),
            tuple(own[key].shape),
        )
    if report.unexpected:
        log.info(
            "init_from %s: skipped %d tensors not in this model: %s",
            path,
            len(report.unexpected),
            report.unexpected,
        )
    if report.missing:
        log.info(
            "init_from %s: %d tensors of this model are not in the checkpoint and keep their "
            "initialisation: %s",
            path,
            len(report.missing),
            report.missing,
        )
    return report


def _part(key: str, depth: int = 2) -> str:
    """The component a tensor belongs to, e.g. ``model.backbone`` for ``model.backbone.x.w``."""
    return ".".join(key.split(".")[:depth])
