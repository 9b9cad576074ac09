"""Reading a trained module back from a checkpoint, whichever LightningModule wrote it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pointins.engine.baseline_module import TorchvisionModule
from pointins.engine.lit_module import DetectionModule, PointINSModule


def module_class(hparams: Mapping[str, Any]) -> type[DetectionModule]:
    """The LightningModule class that wrote a checkpoint with these hyper-parameters
    (``checkpoint["hyper_parameters"]``): a torchvision baseline's record its ``baseline``."""
    if "baseline" in hparams:
        return TorchvisionModule
    return PointINSModule


def load_module(
    path: str | Path, score_thresh: float | None = None, mask_thresh: float | None = None
) -> DetectionModule:
    """The trained module in checkpoint ``path`` (PointINS or a torchvision baseline,
    whichever wrote it), on the CPU, in eval mode. ``score_thresh`` and ``mask_thresh``
    replace the stored ``detector.postprocess.score_thresh`` and ``mask.mask_thresh``
    (``None`` keeps them). The backbone's ImageNet weights and ``init_from``'s file are not
    read again: the checkpoint has the weights."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {str(file)!r} does not exist")
    saved = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    hparams = saved.get("hyper_parameters")
    if not hparams or "class_names" not in hparams:
        raise ValueError(
            f"{file} is not a checkpoint written by train.py: it has no hyper-parameters "
            "with class_names"
        )
    overrides: dict[str, Any] = {
        "init_from": None,
        "backbone": {**hparams["backbone"], "pretrained": False, "checkpoint_path": None},
    }
    if score_thresh is not None:
        detector = hparams["detector"]
        postprocess = {**detector["postprocess"], "score_thresh": float(score_thresh)}
        overrides["detector"] = {**detector, "postprocess": postprocess}
    if mask_thresh is not None:
        if not hparams.get("mask"):
            raise ValueError(f"mask_thresh given, but checkpoint {file} has no PointINS masks")
        overrides["mask"] = {**hparams["mask"], "mask_thresh": float(mask_thresh)}
    module = module_class(hparams).load_from_checkpoint(
        file, map_location="cpu", weights_only=True, **overrides
    )
    return module.eval()
