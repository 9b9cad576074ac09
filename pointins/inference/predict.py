"""Prediction on unlabelled images: a picture per image and one COCO results JSON.

    python eval.py ckpt_path=FILE predict.input=DIR_OR_IMAGE

The checkpoint supplies the test-time resize and normalisation it was trained with (see
:class:`~pointins.inference.predictor.Predictor`), so an image is seen exactly as in evaluation.
Written into the run directory:

* ``predictions/<image stem>.png``: the image with masks, boxes, class names and scores
  of the detections scoring at least ``predict.draw_score_thresh`` (display only);
* ``predictions.json``: every detection the detector keeps (classification score above
  its ``score_thresh``; see :mod:`pointins.detectors.postprocess`) in the COCO results
  format (``image_id``, ``category_id``, ``bbox`` xywh, ``score``, ``segmentation`` RLE)
  plus ``file_name``; ``image_id`` is the image's position in the sorted listing.

Unreadable files are logged by name and skipped; the summary counts them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.ops import box_convert
from torchvision.transforms.v2.functional import pil_to_tensor
from tqdm import tqdm

from pointins.inference.predictor import Prediction, Predictor, draw

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(path: str | Path) -> list[Path]:
    """The image files to predict: ``path`` itself, or the images of folder ``path`` sorted."""
    root = Path(path).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(
            f"predict.input={str(root)!r} is neither an image file nor a folder; "
            "pass a folder of images or one image"
        )
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(
            f"predict.input={str(root)!r} holds no image (suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def read_image(path: Path) -> Tensor | None:
    """``(3, H, W)`` uint8 RGB, or ``None`` when the file cannot be decoded."""
    try:
        with Image.open(path) as img:
            return pil_to_tensor(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        log.warning("skipped %s: not a readable image (%s)", path, err)
        return None


def to_coco_results(
    prediction: Prediction, image_id: int, file_name: str, category_ids: Sequence[int]
) -> list[dict]:
    """One COCO result per detection of one image (boxes xywh in original pixels)."""
    boxes = box_convert(prediction.boxes, "xyxy", "xywh").tolist()  # (n, 4)
    rles = [None] * len(boxes) if prediction.masks is None else prediction.rle()
    results = []
    for box, score, label, rle in zip(
        boxes, prediction.scores.tolist(), prediction.labels.tolist(), rles, strict=True
    ):
        result = {
            "image_id": image_id,
            "file_name": file_name,
            "category_id": int(category_ids[label]),
            "bbox": [round(v, 2) for v in box],
            "score": round(score, 5),
        }
        if rle is not None:
            result["segmentation"] = rle
        results.append(result)
    return results


def predict_images(
    predictor: Predictor,
    files: Sequence[Path],
    output_dir: str | Path,
    draw_score_thresh: float = 0.3,
) -> Path:
    """Predict ``files`` in batches; write pictures and ``predictions.json``; return its path."""
    output_dir = Path(output_dir)
    pictures = output_dir / "predictions"
    pictures.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    skipped: list[str] = []
    indexed = list(enumerate(files))  # image_id = position in the listing
    size = predictor.batch_size
    batches = [indexed[i : i + size] for i in range(0, len(indexed), size)]
    with tqdm(total=len(files), desc="Predicting", unit="img") as bar:
        for chunk in batches:
            loaded = []  # (image_id, path, (3, H0, W0) uint8)
            for image_id, path in chunk:
                image = read_image(path)
                if image is None:
                    skipped.append(str(path))
                else:
                    loaded.append((image_id, path, image))
            predictions = predictor.predict_loaded([image for _, _, image in loaded])
            for (image_id, path, image), pred in zip(loaded, predictions, strict=True):
                pred = pred.to("cpu")
                results += to_coco_results(pred, image_id, path.name, predictor.category_ids)
                draw(image, pred, draw_score_thresh).save(pictures / f"{path.stem}.png")
            bar.update(len(chunk))
    out = output_dir / "predictions.json"
    out.write_text(json.dumps(results))
    log.info(
        "predicted %d image(s) (%d detections): pictures in %s, results in %s; "
        "%d unreadable file(s) skipped%s",
        len(files) - len(skipped),
        len(results),
        pictures,
        out,
        len(skipped),
        f": {', '.join(skipped)}" if skipped else "",
    )
    return out
