"""The LightningModule of the torchvision baselines (``baseline=fcos|retinanet|maskrcnn``):
the models of :mod:`pointins.baselines`, trained, evaluated and optimised by
:class:`~pointins.engine.lit_module.DetectionModule` exactly as PointINS is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from pointins.baselines import BASELINES, TorchvisionDetector, build_torchvision
from pointins.engine.checkpoints import init_from_checkpoint
from pointins.engine.lit_module import DetectionModule, plain
from pointins.structures import Batch


def _reject_pointins_options(
    name: str,
    neck: Mapping,
    detector: Mapping,
    mask: Mapping | None,
    det_weight: float,
    compile: bool,
) -> None:
    """A clear error for each PointINS option that a torchvision baseline cannot honour."""
    if mask is not None:
        own = "its own RoI mask head" if name == "maskrcnn" else "no mask output"
        raise ValueError(
            f"baseline={name} with a PointINS mask module (model.mask, the mask config group): "
            f"torchvision's {name} has {own}. Drop the mask=... override or model.mask.* "
            "overrides (the baseline configs select mask=none)."
        )
    if det_weight != 1.0:
        raise ValueError(
            f"model.det_weight={det_weight} weights PointINS's detection loss; "
            f"baseline={name} trains on torchvision's own loss sum. Drop the override."
        )
    if compile:
        raise ValueError(
            f"model.compile=true compiles PointINS's network; baseline={name} does not support "
            "it. Drop the override."
        )
    if detector["head"]["checkpoint_towers"]:
        raise ValueError(
            "model.detector.head.checkpoint_towers=true recomputes PointINS's towers; "
            f"baseline={name} uses torchvision's heads. Drop the override."
        )
    conv_dim = detector["head"]["conv_dim"]
    width = neck["out_channels"]
    if int(conv_dim) != int(width):
        raise ValueError(
            f"model.detector.head.conv_dim={conv_dim} differs from "
            f"model.neck.out_channels={width}: torchvision's heads are as wide as the FPN. "
            "Set both to the same width."
        )


class TorchvisionModule(DetectionModule):
    """torchvision's FCOS, RetinaNet or Mask R-CNN, trained, evaluated and optimised by
    :class:`~pointins.engine.lit_module.DetectionModule` exactly as PointINS is.

    Args:
        baseline: one of :data:`BASELINES` (the ``baseline`` config group sets it).
        backbone, neck, detector: the recipe's config groups; the detector's tower depth,
            normalisation, prior, P6 input and inference options apply (see the module
            docstring).
        optim: ``optimizer`` and ``scheduler`` partial configs, and ``max_epochs``.
        class_names, category_ids, preprocess: as
            :class:`~pointins.engine.lit_module.PointINSModule`.
        init_from: checkpoint to initialise from; tensors whose shape differs are skipped.
        mask, det_weight, compile: PointINS options, accepted only at their neutral values
            (``None``, 1, false) so that a PointINS-only override is a clear error.
    """

    def __init__(
        self,
        baseline: str,
        backbone: Mapping,
        neck: Mapping,
        detector: Mapping,
        optim: Mapping,
        class_names: list[str],
        category_ids: list[int] | None = None,
        preprocess: Mapping[str, Any] | None = None,
        init_from: str | None = None,
        mask: Mapping | None = None,
        det_weight: float = 1.0,
        compile: bool = False,
    ) -> None:
        if baseline not in BASELINES:
            raise ValueError(f"baseline={baseline!r}: choose one of {', '.join(BASELINES)}")
        super().__init__(class_names, category_ids, preprocess)
        hparams = {
            "baseline": baseline,
            "backbone": plain(backbone),
            "neck": plain(neck),
            "detector": plain(detector),
            "optim": plain(optim),
            "class_names": list(class_names),
            "category_ids": self.category_ids,
            "preprocess": self.preprocess and self.preprocess.to_dict(),
            "init_from": init_from,
        }
        _reject_pointins_options(
            baseline, hparams["neck"], hparams["detector"], plain(mask), det_weight, compile
        )
        net = build_torchvision(
            baseline,
            hparams["backbone"],
            hparams["neck"],
            hparams["detector"],
            len(self.class_names),
        )
        self.model = TorchvisionDetector(baseline, net)
        # the normalisation actually built (norm=auto depends on the weights)
        hparams["backbone"] = {**hparams["backbone"], "norm": self.model.backbone.norm}
        self.save_hyperparameters(hparams, logger=False)
        if init_from is not None:
            init_from_checkpoint(self, init_from)

    def step_losses(self, batch: Batch) -> dict[str, Tensor]:
        return self.model.losses(batch.images, batch.image_sizes, batch.targets)
