"""A trained model from Python: images in, instances out.

    from pointins import Predictor, draw

    predictor = Predictor.from_checkpoint("outputs/train/.../checkpoints/last.ckpt")
    result = predictor("street.jpg")          # a path, PIL image, HWC array or CHW tensor
    print(result.class_names, result.scores)  # one entry per detection, best first
    draw("street.jpg", result).save("street_pred.png")

The checkpoint carries everything inference needs (:class:`~pointins.preprocess.Preprocess`,
class names, dataset category ids, score and mask thresholds), so no data config is read.
Images of any sizes are resized, normalised and batched as in evaluation; boxes and masks
come back at each image's original resolution.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image

from pointins.evaluation.coco import encode_masks
from pointins.inference.visualize import draw_instances
from pointins.preprocess import Preprocess

if TYPE_CHECKING:
    from pointins.engine.lit_module import DetectionModule

log = logging.getLogger(__name__)

#: what :class:`Predictor` takes as one image
ImageLike = str | Path | Image.Image | np.ndarray | Tensor


class PreprocessMissing(ValueError):
    """A checkpoint written before preprocessing was stored, and no full replacement given."""


@dataclass
class Prediction:
    """The instances found in one image, by decreasing score, at its original resolution."""

    boxes: Tensor  # (n, 4) float xyxy, original pixels
    scores: Tensor  # (n,)
    labels: Tensor  # (n,) long, training labels 0..C-1
    class_names: list[str]  # (n,) the label's class name
    masks: Tensor | None  # (n, H0, W0) bool; None for a detector without masks
    image_size: tuple[int, int]  # (H0, W0)

    def __len__(self) -> int:
        return len(self.scores)

    def rle(self) -> list[dict[str, Any]]:
        """COCO run-length encodings of the masks (``{"size": [H, W], "counts": str}``)."""
        if self.masks is None:
            raise ValueError("this model predicts no masks (trained with mask=none)")
        return encode_masks(self.masks.cpu())

    def to(self, device: torch.device | str) -> Prediction:
        move = {k: getattr(self, k).to(device) for k in ("boxes", "scores", "labels")}
        masks = None if self.masks is None else self.masks.to(device)
        return Prediction(
            **move, masks=masks, class_names=self.class_names, image_size=self.image_size
        )


def load_image(image: ImageLike) -> Tensor:
    """One image as ``(3, H, W)`` RGB: uint8, or float in [0, 1] as given.

    Accepts a path, a PIL image (any mode), a NumPy array ``(H, W)`` or ``(H, W, 3)``
    (uint8, or float in [0, 1]; RGB: reverse OpenCV's BGR with ``img[..., ::-1]``), or a
    tensor ``(3, H, W)`` / ``(H, W)`` (uint8, or float in [0, 1], torchvision's convention).
    """
    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} does not exist")
        try:
            with Image.open(path) as img:
                return pil_to_tensor(img.convert("RGB"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} is not a readable image: {err}") from err
    if isinstance(image, Image.Image):
        return pil_to_tensor(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[-1] != 3:
            raise ValueError(
                f"a NumPy image must be (H, W) or (H, W, 3) RGB, got shape {image.shape}"
            )
        if not image.flags.writeable:  # e.g. np.asarray(pil_image): torch wants to own it
            image = image.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        image = tensor.permute(2, 0, 1) if tensor.dim() == 3 else tensor  # (3, H, W) or (H, W)
    if not isinstance(image, Tensor):
        raise TypeError(
            f"cannot read an image from {type(image).__name__}: pass a path, a PIL image, a "
            "NumPy array (H, W, 3) or a tensor (3, H, W)"
        )
    if image.dim() == 2:
        image = image.expand(3, *image.shape)  # grey -> (3, H, W)
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"an image tensor must be (3, H, W) or (H, W), got {tuple(image.shape)}")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise TypeError(f"image dtype {image.dtype}: use uint8 (0-255) or float (0-1)")
    return image.cpu()


class Predictor:
    """Runs a trained model on images: ``predictor(image)`` -> :class:`Prediction`,
    ``predictor([image, ...])`` -> a list of them.

    Args:
        model: a network with ``predict(images, image_sizes, orig_sizes)`` (PointINS or a
            torchvision baseline, as :class:`~pointins.engine.lit_module.DetectionModule` holds).
        preprocess: the resize, normalisation and padding the model was trained with.
        class_names: one per training label.
        category_ids: the dataset's category id of each label (COCO results files).
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Preprocess,
        class_names: Sequence[str],
        category_ids: Sequence[int] | None = None,
        batch_size: int = 4,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.preprocess = preprocess
        self.class_names = list(class_names)
        self.category_ids = (
            list(range(1, len(self.class_names) + 1))
            if category_ids is None
            else [int(c) for c in category_ids]
        )
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: torch.device | str | None = None,
        batch_size: int = 4,
        preprocess: Preprocess | Mapping[str, Any] | None = None,
        score_thresh: float | None = None,
        mask_thresh: float | None = None,
    ) -> Predictor:
        """The model of a ``train.py`` checkpoint with its stored preprocessing.

        Args:
            device: ``"cuda"``, ``"cpu"``, ...; ``None``: CUDA when available.
            preprocess: a :class:`Preprocess` replacing the stored one (needed for
                checkpoints that store none), or a mapping of the fields to replace
                (e.g. ``{"test_scale": 640}``); differences from training are logged.
            score_thresh, mask_thresh: replace the checkpoint's detection score threshold
                (``model.detector.postprocess.score_thresh``) and mask threshold
                (``model.mask.mask_thresh``); ``None`` keeps them.
        """
        from pointins.engine.loading import load_module  # Lightning only when loading a file

        module = load_module(path, score_thresh, mask_thresh)
        return cls.from_module(module, device, batch_size, preprocess)

    @classmethod
    def from_module(
        cls,
        module: DetectionModule,
        device: torch.device | str | None = None,
        batch_size: int = 4,
        preprocess: Preprocess | Mapping[str, Any] | None = None,
    ) -> Predictor:
        """The network of a trained module (:func:`~pointins.engine.loading.load_module`);
        ``device`` and ``preprocess`` as in :meth:`from_checkpoint`."""
        stored = module.preprocess
        if isinstance(preprocess, Preprocess):
            used = preprocess
        elif stored is None:
            raise PreprocessMissing(
                "the checkpoint stores no preprocessing (an older version wrote it): pass "
                "preprocess=Preprocess(test_scale=..., max_size=..., mean=..., std=...) as in "
                "its training data config"
            )
        else:
            used = dataclasses.replace(stored, **(preprocess or {}))
        if stored is not None and stored.differences(used):
            changes = stored.differences(used).items()
            log.warning(
                "preprocessing differs from training: %s",
                ", ".join(f"{k} {a} (training) -> {b}" for k, (a, b) in changes),
            )
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(
            module.model.to(device), used, module.class_names, module.category_ids, batch_size
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> Prediction | list[Prediction]:
        """One :class:`Prediction` per image (a list for a list, one for one image)."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        results = self.predict_loaded([load_image(image) for image in batch])
        return results[0] if single else results

    @torch.inference_mode()
    def predict_loaded(self, images: Sequence[Tensor]) -> list[Prediction]:
        """Predictions for ``(3, H, W)`` RGB images (uint8, or float in [0, 1])."""
        results: list[Prediction] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch, sizes = self.preprocess.batch(chunk)  # (b, 3, Hp, Wp), [(h, w)]
            orig_sizes = [tuple(image.shape[-2:]) for image in chunk]
            outputs = self.model.predict(batch.to(self.device), sizes, orig_sizes)
            for out, size in zip(outputs, orig_sizes, strict=True):
                labels = out["labels"]
                results.append(
                    Prediction(
                        boxes=out["boxes"],
                        scores=out["scores"],
                        labels=labels,
                        class_names=[self.class_names[i] for i in labels.tolist()],
                        masks=out.get("masks"),
                        image_size=size,
                    )
                )
        return results


def draw(image: ImageLike, result: Prediction, score_thresh: float = 0.0) -> Image.Image:
    """The image with the masks, boxes, class names and scores of ``result``'s detections
    scoring at least ``score_thresh``, as a PIL image."""
    pixels = load_image(image)
    if pixels.is_floating_point():
        pixels = (pixels * 255).round().clamp(0, 255).to(torch.uint8)
    shown = result.scores >= score_thresh
    target = {k: getattr(result, k)[shown].cpu() for k in ("boxes", "scores", "labels")}
    if result.masks is not None:
        target["masks"] = result.masks[shown].cpu()
    names = _label_names(result)
    return to_pil_image(draw_instances(pixels, target, names))


def _label_names(result: Prediction) -> list[str]:
    """Class names indexed by label, from the detections' own (enough for drawing)."""
    names: dict[int, str] = dict(zip(result.labels.tolist(), result.class_names, strict=True))
    return [names.get(i, str(i)) for i in range(max(names, default=-1) + 1)]
