"""Initialise a model from another run's checkpoint (``model.init_from``), e.g. COCO → Cityscapes.

Every tensor whose name and shape match is loaded: backbone, FPN, detector towers, box
branch and mask module of a checkpoint trained with the same architecture. Tensors of
another shape (the class logits, when the class count differs) keep this model's fresh
initialisation, i.e. they are re-initialised. Loaded, skipped and missing tensors are logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


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
