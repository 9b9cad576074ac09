"""COCO box and mask AP through pycocotools, against the dataset's own annotation file.

Predictions are converted to COCO result dicts as soon as they arrive (boxes to
``xywh``, masks to RLE), so full-resolution masks never outlive :meth:`CocoEvaluator.update`,
and the result dicts are streamed to a JSON-lines file in the output folder: the memory
of the evaluation loop does not grow with the split (5,000 COCO images × 100 detections
would otherwise be ~10^6 Python dicts). Under ``torch.distributed`` every rank streams its
own file; :meth:`CocoEvaluator.compute` reads them back, gathers them on rank 0 (no shared
file system needed), evaluates once there and broadcasts the metrics to every rank.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from pointins.evaluation.distributed import evaluate_on_rank0

logger = logging.getLogger("pointins.evaluation")

IOU_TYPES = ("bbox", "segm")
# metric name -> (IoU threshold or None for the 0.50:0.95 mean, area range label)
AP_METRICS: dict[str, tuple[float | None, str]] = {
    "AP": (None, "all"),
    "AP50": (0.5, "all"),
    "AP75": (0.75, "all"),
    "APs": (None, "small"),
    "APm": (None, "medium"),
    "APl": (None, "large"),
}

ImageResults = dict[str, list[dict[str, Any]]]  # iou type -> COCO result dicts of one image


def encode_masks(masks: Tensor) -> list[dict[str, Any]]:
    """RLE-encode ``(n, H, W)`` masks in one pycocotools call; JSON-ready (``counts`` is str).

    Bool and integer masks are taken as they are (non-zero = foreground), floating-point
    masks are probabilities thresholded at ``>= 0.5``.
    """
    if masks.dim() != 3:
        raise ValueError(
            f"encode_masks: expected masks of shape (n, H, W), got {tuple(masks.shape)}."
        )
    if masks.shape[0] == 0:
        return []
    binary = masks >= 0.5 if masks.is_floating_point() else masks != 0
    # (n, W, H) C-order transposed is (H, W, n) Fortran-order: the layout pycocotools wants.
    fortran = binary.to(torch.uint8).transpose(1, 2).contiguous().cpu().numpy().T
    rles = mask_util.encode(fortran)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def save_metrics(metrics: Mapping[str, float], path: str | Path) -> Path:
    """Write ``metrics`` as JSON to ``path``, overwriting any previous file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(metrics), indent=2, sort_keys=True) + "\n")
    return path


class CocoEvaluator:
    """Accumulate per-image predictions and score them with pycocotools ``COCOeval``.

    Args:
        ann_file: the COCO-format annotation file of the evaluated split.
        label_to_cat_id: ``label_to_cat_id[label]`` is the COCO category id of the
            contiguous training label ``label``.
        output_dir: where ``bbox.json``, ``segm.json`` and ``metrics.json`` are written.
        iou_types: any of ``"bbox"`` and ``"segm"``.
        max_dets: detections per image scored (COCO's third ``maxDets``); note that
            ``COCOeval`` applies it per image *and category*.

    Call :meth:`reset` before each evaluation epoch, :meth:`update` per batch and
    :meth:`compute` once at the end, on every rank; ``compute`` consumes the streamed
    predictions (their hidden ``.predictions-*.jsonl`` file is removed).

    An ``ann_file`` without ``"annotations"`` (an image-info file, such as COCO's
    ``image_info_test-dev2017.json``) has no ground truth: ``compute`` writes the result
    files, for the evaluation server, and scores nothing.
    """

    def __init__(
        self,
        ann_file: str | Path,
        label_to_cat_id: Sequence[int],
        output_dir: str | Path,
        iou_types: Sequence[str] = IOU_TYPES,
        max_dets: int = 100,
    ) -> None:
        unknown = set(iou_types) - set(IOU_TYPES)
        if not iou_types or unknown:
            raise ValueError(
                f"CocoEvaluator: iou_types must be a non-empty subset of {IOU_TYPES}, "
                f"got {tuple(iou_types)}."
            )
        if len(label_to_cat_id) == 0:
            raise ValueError(
                "CocoEvaluator: label_to_cat_id is empty; give one category id per label."
            )
        self.ann_file = Path(ann_file)
        self.label_to_cat_id = [int(c) for c in label_to_cat_id]
        self.output_dir = Path(output_dir)
        self.iou_types = tuple(t for t in IOU_TYPES if t in iou_types)
        self.max_dets = int(max_dets)
        self._coco: COCO | None = None
        # rank 0, after compute: one row per label (see compute)
        self.per_class: list[dict[str, Any]] = []
        self.reset()

    @property
    def coco(self) -> COCO:
        """The ground truth, loaded (quietly) on first use."""
        if self._coco is None:
            if not self.ann_file.is_file():
                raise FileNotFoundError(
                    f"CocoEvaluator: annotation file {self.ann_file} not found."
                )
            with contextlib.redirect_stdout(io.StringIO()):
                coco = COCO(str(self.ann_file))
            missing = sorted(set(self.label_to_cat_id) - set(coco.getCatIds()))
            if missing:
                raise ValueError(
                    f"CocoEvaluator: category ids {missing} of label_to_cat_id are not categories "
                    f"of {self.ann_file}; fix the datamodule's label map."
                )
            self._coco = coco
        return self._coco

    def reset(self) -> None:
        """Forget all accumulated predictions."""
        if getattr(self, "_spill", None) is not None:
            self._spill_cleanup()
        self._spill: Any = None  # the JSON-lines file, opened on the first update
        self._spill_cleanup: Any = None
        self._image_ids: set[int] = set()
        self._has_masks: bool | None = None

    def _stream(self, image_id: int, results: ImageResults) -> None:
        """Append one image's result dicts to this rank's JSON-lines file."""
        if self._spill is None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._spill = tempfile.NamedTemporaryFile(  # noqa: SIM115  (closed by compute/reset)
                "w+", dir=self.output_dir, prefix=".predictions-", suffix=".jsonl", delete=False
            )
            # closed and removed by compute/reset, or when the evaluator is dropped
            self._spill_cleanup = weakref.finalize(self, _remove, self._spill)
        self._spill.write(json.dumps([image_id, results]) + "\n")

    def _read_streamed(self) -> dict[int, ImageResults]:
        """This rank's results, read back from its file, which is then removed."""
        if self._spill is None:
            return {}
        self._spill.flush()
        self._spill.seek(0)
        results = {}
        for line in self._spill:
            image_id, image_results = json.loads(line)
            results[int(image_id)] = image_results
        self._spill_cleanup()
        self._spill = None
        return results

    def update(self, image_ids: Sequence[int], predictions: Sequence[dict[str, Tensor]]) -> None:
        """Convert one batch of predictions to COCO result dicts and keep those.

        Each prediction holds ``boxes`` (n, 4) ``xyxy`` in original-image pixels,
        ``scores`` (n,), ``labels`` (n,) contiguous ``0..C-1`` and optionally ``masks``
        (n, H0, W0) at original resolution (bool, uint8 or probabilities). An image seen
        twice (e.g. padding of a ``DistributedSampler``) is scored once.
        """
        if len(image_ids) != len(predictions):
            raise ValueError(
                f"CocoEvaluator.update: {len(image_ids)} image ids for "
                f"{len(predictions)} predictions."
            )
        for image_id, prediction in zip(image_ids, predictions, strict=True):
            image_id = int(image_id)
            if image_id in self._image_ids:
                continue
            results = self._to_coco_results(image_id, prediction)  # raises on bad input
            self._image_ids.add(image_id)
            self._stream(image_id, results)
        if self._spill is not None:
            self._spill.flush()  # the batch's results leave memory

    def _to_coco_results(self, image_id: int, prediction: dict[str, Tensor]) -> ImageResults:
        """The COCO result dicts of one image, per iou type."""
        image = self.coco.imgs.get(image_id)
        if image is None:
            raise ValueError(f"CocoEvaluator: image id {image_id} is not in {self.ann_file}.")
        boxes = prediction["boxes"].detach().to("cpu", torch.float64)  # (n, 4) xyxy
        scores = prediction["scores"].detach().cpu().tolist()
        labels = prediction["labels"].detach().cpu().long()
        n = boxes.shape[0]
        if boxes.shape != (n, 4) or len(scores) != n or labels.shape != (n,):
            raise ValueError(
                f"CocoEvaluator: image {image_id}: boxes {tuple(boxes.shape)}, scores "
                f"({len(scores)},) and labels {tuple(labels.shape)} must be (n, 4), (n,), (n,)."
            )
        num_labels = len(self.label_to_cat_id)
        bad = labels[(labels < 0) | (labels >= num_labels)]
        if bad.numel():
            raise ValueError(
                f"CocoEvaluator: image {image_id}: label {int(bad[0])} is outside "
                f"0..{num_labels - 1}; label_to_cat_id has {num_labels} entries."
            )
        cat_ids = [self.label_to_cat_id[label] for label in labels.tolist()]
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        results: ImageResults = {
            "bbox": [
                {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
                for c, b, s in zip(cat_ids, xywh, scores, strict=True)
            ]
        }
        self._check_has_masks("masks" in prediction)
        if "masks" in prediction and "segm" in self.iou_types:
            masks = prediction["masks"].detach()
            expected = (n, image["height"], image["width"])
            if tuple(masks.shape) != expected:
                raise ValueError(
                    f"CocoEvaluator: image {image_id}: masks {tuple(masks.shape)} must be "
                    f"(n, height, width) = {expected}, the original resolution in {self.ann_file}."
                )
            results["segm"] = [
                {"image_id": image_id, "category_id": c, "segmentation": rle, "score": s}
                for c, rle, s in zip(cat_ids, encode_masks(masks), scores, strict=True)
            ]
        return results

    def _check_has_masks(self, has_masks: bool) -> None:
        """Masks must come with every prediction or with none."""
        if self._has_masks is None:
            self._has_masks = has_masks
        elif self._has_masks != has_masks:
            raise ValueError(
                "CocoEvaluator: some predictions have 'masks' and others do not; "
                "give masks for every image or for none."
            )

    def compute(self, extra: Mapping[str, float] | None = None) -> dict[str, float]:
        """Gather, evaluate once on rank 0 and return the metrics (in percent) on every rank.

        Keys are ``{iou_type}/{AP,AP50,AP75,APs,APm,APl}`` and, per class,
        ``{iou_type}/AP-<class name>`` (as detectron2 names them); an area range or a class
        without ground truth gives NaN. ``extra`` (rank 0's, e.g. the inference speed) is
        added to them. Rank 0 writes ``bbox.json``, ``segm.json`` and ``metrics.json`` and
        fills :attr:`per_class` (class, bbox AP, segm AP, instances), the rows of
        :func:`per_class_table`.
        """
        own = self._read_streamed()
        self.reset()
        return evaluate_on_rank0(own, lambda parts: self._evaluate(_merge(parts), extra or {}))

    def _evaluate(
        self, results: dict[int, ImageResults], extra: Mapping[str, float]
    ) -> dict[str, float]:
        """Write the result files and score every iou type on the updated images."""
        image_ids = sorted(results)
        num_images = len(self.coco.getImgIds())
        logger.info(
            "COCO evaluation on %d of the %d images of %s",
            len(image_ids),
            num_images,
            self.ann_file,
        )
        # with nothing updated it is unknown whether masks would come: report segm as 0 too
        has_masks = any("segm" in r for r in results.values()) or not results
        scored = "annotations" in self.coco.dataset
        self.output_dir.mkdir(parents=True, exist_ok=True)
        metrics: dict[str, float] = {}
        for iou_type in self.iou_types:
            if iou_type == "segm" and not has_masks:
                continue
            dets = [d for i in image_ids for d in results[i].get(iou_type, [])]
            path = self.output_dir / f"{iou_type}.json"
            path.write_text(json.dumps(dets))
            if not scored:
                logger.info(
                    "%s has no 'annotations' (an image-info file): wrote %d %s results of %d "
                    "images to %s for the evaluation server; nothing scored",
                    self.ann_file,
                    len(dets),
                    iou_type,
                    len(image_ids),
                    path,
                )
                continue
            metrics.update(
                {f"{iou_type}/{k}": v for k, v in self._score(iou_type, dets, image_ids).items()}
            )
        self.per_class = self._per_class_rows(metrics, image_ids) if scored else []
        metrics.update({k: float(v) for k, v in extra.items()})
        save_metrics(metrics, self.output_dir / "metrics.json")
        return metrics

    def class_names(self) -> list[str]:
        """The category name of each training label."""
        return [self.coco.cats[c]["name"] for c in self.label_to_cat_id]

    def _per_class_rows(
        self, metrics: Mapping[str, float], image_ids: list[int]
    ) -> list[dict[str, Any]]:
        """Per label: class name, bbox and segm AP (when scored) and the number of non-crowd
        ground-truth instances of the class in the evaluated images."""
        anns = [a for i in image_ids for a in self.coco.imgToAnns.get(i, []) if not a["iscrowd"]]
        cat_ids = np.array([a["category_id"] for a in anns], dtype=np.int64)
        counts = (cat_ids[:, None] == np.array(self.label_to_cat_id)[None]).sum(0)  # (C,)
        rows = []
        for name, count in zip(self.class_names(), counts.tolist(), strict=True):
            row: dict[str, Any] = {"class": name}
            for iou_type in self.iou_types:
                if f"{iou_type}/AP-{name}" in metrics:
                    row[f"{iou_type} AP"] = metrics[f"{iou_type}/AP-{name}"]
            row["instances"] = count
            rows.append(row)
        return rows

    def _score(
        self, iou_type: str, dets: list[dict[str, Any]], image_ids: list[int]
    ) -> dict[str, float]:
        """AP metrics (percent) of one iou type, the summary and ``AP-<class name>`` per
        class; zeros with a warning when nothing was detected."""
        per_class_keys = [f"AP-{name}" for name in self.class_names()]
        if not dets:
            logger.warning(
                "COCO %s: no predictions on %d images; AP is 0.", iou_type, len(image_ids)
            )
            return dict.fromkeys([*AP_METRICS, *per_class_keys], 0.0)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = self.coco.loadRes([dict(d) for d in dets])  # loadRes adds keys: copy
            coco_eval = COCOeval(self.coco, coco_dt, iou_type)
            coco_eval.params.imgIds = image_ids
            # summarize_ap reads the last (largest) maxDets: keep max_dets there
            coco_eval.params.maxDets = [m for m in (1, 10) if m < self.max_dets] + [self.max_dets]
            coco_eval.evaluate()
            coco_eval.accumulate()
        metrics = summarize_ap(coco_eval)
        header = " | ".join(f"{k:>7}" for k in metrics)
        values = " | ".join(f"{v:7.3f}" for v in metrics.values())
        logger.info(
            "COCO %s AP (%%), max %d dets:\n%s\n%s", iou_type, self.max_dets, header, values
        )
        per_class = per_class_ap(coco_eval, self.label_to_cat_id)
        logger.info(
            "COCO %s per-class AP (%%): %s",
            iou_type,
            ", ".join(f"{k[3:]} {v:.3f}" for k, v in zip(per_class_keys, per_class, strict=True)),
        )
        metrics.update(zip(per_class_keys, per_class, strict=True))
        return metrics


def summarize_ap(coco_eval: COCOeval) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl in percent at the largest ``maxDets``, NaN where undefined.

    Same numbers as ``COCOeval.summarize`` (mean over the entries > -1), but also correct
    when the largest ``maxDets`` is not 100, where ``summarize`` reports -1 for AP.
    """
    params = coco_eval.params
    # (T iou thresholds, R recall points, K categories, A area ranges, M maxDets)
    precision = coco_eval.eval["precision"]
    metrics = {}
    for name, (iou_thr, area) in AP_METRICS.items():
        p = precision[:, :, :, params.areaRngLbl.index(area), -1]  # (T, R, K)
        if iou_thr is not None:
            p = p[np.isclose(params.iouThrs, iou_thr)]
        valid = p[p > -1]
        metrics[name] = float(np.mean(valid) * 100) if valid.size else float("nan")
    return metrics


def per_class_ap(coco_eval: COCOeval, cat_ids: Sequence[int]) -> list[float]:
    """AP (percent, IoU 0.50:0.95, all areas, largest ``maxDets``) of each category in
    ``cat_ids``, as detectron2's ``_derive_coco_results``: the mean of ``precision`` over
    its valid (> -1) entries; NaN for a category without ground truth."""
    params = coco_eval.params
    # (T iou thresholds, R recall points, K categories, A area ranges, M maxDets)
    precision = coco_eval.eval["precision"]
    k = [list(params.catIds).index(c) for c in cat_ids]
    p = precision[:, :, k, params.areaRngLbl.index("all"), -1]  # (T, R, C)
    valid = p > -1
    count = valid.sum(axis=(0, 1))  # (C,)
    total = np.where(valid, p, 0.0).sum(axis=(0, 1))  # (C,)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(count > 0, total / count * 100, np.nan)
    return [float(v) for v in ap]


def per_class_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The rows of an evaluator's ``per_class`` as a ``wandb.Table``, columns in the rows'
    key order (NaN cells, classes without ground truth, become empty)."""
    import wandb

    columns = list(rows[0]) if rows else ["class"]
    data = [
        [None if isinstance(v, float) and np.isnan(v) else v for v in (r.get(c) for c in columns)]
        for r in rows
    ]
    return wandb.Table(columns=columns, data=data)


def log_per_class_table(
    loggers: Sequence[Any],
    rows: Sequence[Mapping[str, Any]],
    step: int,
    key: str = "val/per_class_ap",
) -> None:
    """Log ``rows`` as a ``wandb.Table`` under ``key`` to every Lightning ``WandbLogger`` in
    ``loggers`` (nothing without one, or without rows)."""
    from pytorch_lightning.loggers import WandbLogger

    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers or not rows:
        return
    table = per_class_table(rows)
    for lg in wandb_loggers:
        lg.experiment.log({key: table, "trainer/global_step": step})


def _remove(file: Any) -> None:
    file.close()
    Path(file.name).unlink(missing_ok=True)


def _merge(parts: list[dict[int, ImageResults]]) -> dict[int, ImageResults]:
    """One result dict per image id; an image scored by several ranks is kept once."""
    merged: dict[int, ImageResults] = {}
    for part in parts:
        for image_id, results in part.items():
            merged.setdefault(image_id, results)
    return merged
