"""How well a mask module can learn on a trained network's features, apart from how fast
those features learn to carry shape: a fresh mask module trained alone on a checkpoint's
frozen backbone, FPN and detector.

    python -m benchmarks.mask_fit --ckpt outputs/.../checkpoints/last.ckpt
    python -m benchmarks.mask_fit --ckpt ... model.mask.kernel_size=5 data.root=data/shapes_s1

In joint training the mask module and the features it reads learn together, so its
quality mixes two things: what the module can make of informative features, and when the
features become informative. Here the backbone, FPN and detector are the checkpoint's and
stay fixed (evaluation mode, no gradient); a mask module built from the checkpoint's mask
config with any ``model.mask.*`` overrides applied starts from its initialisation and
is trained on the training split's queries and targets, drawn by the recipe's sampler, with
the recipe's mask loss and AdamW (its learning rate, a linear warm-up). Every ``--window``
steps it prints the mean training loss and the mean IoU of the thresholded logits with
their targets (``S x S``, the training samples); at the end, the mask IoU of matched val
detections against the oracle in the same boxes (:mod:`benchmarks.mask_quality`).

Two mask-module options compare on the same features and the same sampled queries, with
none of the seed-to-seed spread of whole trainings; features of an early checkpoint show
whether a mask module could learn from them at all. Trailing arguments are Hydra overrides
of ``conf/train.yaml`` (the data's, the optimiser's, and ``model.mask.*``).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator, Sequence

import torch
from omegaconf import OmegaConf
from torch import Tensor

from benchmarks.config import compose_config
from benchmarks.mask_quality import MATCH_IOU, matched_mask_quality, summary_table
from pointins.engine.lit_module import PointINSModule
from pointins.model import PointINS, build_model

log = logging.getLogger("mask_fit")


#: autocast dtype of a Lightning ``trainer.precision``; full precision for the others
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def thresholded_iou(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean IoU of ``logits >= 0`` with binary ``targets``, both ``(Q, S, S)``; 0 for Q = 0."""
    if logits.shape[0] == 0:
        return logits.new_zeros(())
    predicted, target = logits >= 0, targets > 0.5  # (Q, S, S) each
    inter = (predicted & target).flatten(1).sum(1)  # (Q,)
    union = (predicted | target).flatten(1).sum(1).clamp(min=1)  # (Q,)
    return (inter / union).mean()


def fresh_model(module: PointINSModule, overrides: Sequence[str] = ()) -> PointINS:
    """The checkpoint's backbone, FPN and detector, frozen (evaluation mode, no gradient),
    under a freshly initialised mask module: the checkpoint's own mask config with the
    ``model.mask.*`` entries of ``overrides`` applied (other overrides are ignored here)."""
    if module.model.mask is None:
        raise ValueError("the checkpoint has no mask module (mask=none): nothing to fit")
    h = module.hparams
    changes = [o.removeprefix("model.mask.") for o in overrides if o.startswith("model.mask.")]
    mask = OmegaConf.to_container(OmegaConf.merge(h.mask, OmegaConf.from_dotlist(changes)))
    model = build_model(h.backbone, h.neck, h.detector, mask, len(module.class_names))
    trained = module.model
    model.backbone, model.neck, model.detector = trained.backbone, trained.neck, trained.detector
    model.eval().requires_grad_(False)
    model.mask.train().requires_grad_(True)
    return model


def fit_mask(
    model: PointINS,
    batches: Iterator,
    steps: int,
    lr: float,
    warmup_steps: int,
    weight_decay: float = 1e-4,
    window: int = 100,
    precision: torch.dtype | None = None,
    seed: int = 0,
) -> list[tuple[int, float, float]]:
    """Train ``model.mask`` alone for ``steps`` steps on the frozen rest of ``model``.

    Returns ``(step, mean loss, mean thresholded IoU)`` per ``window`` steps (λ_mask
    included in the loss, as training logs it).
    """
    optimizer = torch.optim.AdamW(model.mask.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    device_type = next(model.parameters()).device.type
    rows, losses, ious = [], [], []
    for step in range(1, steps + 1):
        batch = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / max(warmup_steps, 1))
        with torch.autocast(device_type, dtype=precision, enabled=precision is not None):
            with torch.no_grad():
                _, state = model.detector.forward_train(model.features(batch.images), batch.targets)
            logits, targets = model.mask_logits(state, batch.targets, generator)
            loss = model.weighted_mask_loss(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        ious.append(thresholded_iou(logits.detach(), targets).item())
        if step % window == 0 or step == steps:
            rows.append((step, sum(losses) / len(losses), sum(ious) / len(ious)))
            log.info("step %d: loss %.3f, IoU %.3f", *rows[-1])
            losses, ious = [], []
    return rows


def _cycle(loader) -> Iterator:
    while True:
        yield from loader


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a PointINS checkpoint (last.ckpt)")
    parser.add_argument("--experiment", default="shapes")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--window", type=int, default=100, help="steps per printed row")
    parser.add_argument("--images", type=int, default=120, help="val images to score")
    parser.add_argument("--score-thresh", type=float, default=0.3)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")

    from eval import load_checkpoint  # the entry point's loader: checks the classes
    from pointins.engine.runner import build_datamodule

    cfg = compose_config([*args.overrides], experiment=args.experiment)
    torch.manual_seed(cfg.seed)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    model = fresh_model(load_checkpoint(args.ckpt, datamodule.class_names), args.overrides)
    optim = cfg.optim
    start = time.perf_counter()
    rows = fit_mask(
        model,
        _cycle(datamodule.train_dataloader()),
        args.steps,
        lr=optim.optimizer.lr,
        warmup_steps=min(optim.scheduler.warmup_steps, args.steps),
        weight_decay=optim.optimizer.weight_decay,
        window=args.window,
        precision=AUTOCAST.get(str(cfg.trainer.precision)),
        seed=cfg.seed,
    )
    seconds = time.perf_counter() - start

    model.eval()
    quality, seen = [], 0
    for batch in datamodule.val_dataloader():
        if seen >= args.images:
            break
        with torch.no_grad():
            detections = model.detect(batch.images, batch.image_sizes)
        for b, det in enumerate(detections[: args.images - seen]):
            t = batch.targets[b]
            size, strides = batch.image_sizes[b], model.detector.strides
            quality.append(
                matched_mask_quality(det, t["boxes"], t["masks"], size, strides, args.score_thresh)
            )
            seen += 1
    matched = torch.cat(quality)  # (detections, columns)
    changed = [o for o in args.overrides if o.startswith("model.mask.")]
    mask = " ".join(changed) or "the checkpoint's config"
    text = (
        f"{args.ckpt}: a fresh mask module ({mask}) trained {args.steps} steps on the "
        f"checkpoint's frozen network in {seconds:.0f} s\n\n"
        "| step | training loss | IoU (training samples) |\n|---:|---:|---:|\n"
        + "".join(f"| {step} | {loss:.3f} | {iou:.3f} |\n" for step, loss, iou in rows)
        + f"\n{seen} val images, detections scoring >= {args.score_thresh}:\n\n"
        + (
            summary_table(matched, len(model.detector.strides))
            if len(matched)
            else f"none overlaps a GT box at IoU >= {MATCH_IOU}"
        )
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
