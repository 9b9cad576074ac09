"""Cityscapes instance-level AP through the official ``cityscapesscripts`` evaluation.

Predictions are written in the format the official script and the benchmark server read:
per image a text file ``<city>_<seq>_<frame>_pred.txt`` whose lines are
``masks/<name>.png <Cityscapes label id> <score>``, each PNG a binary mask at the image's
resolution. For a split with ground truth, ``evalInstanceLevelSemanticLabeling`` scores them
against the gtFine instance-id PNGs (group regions and void pixels ignored, instances under
100 pixels not counted, as on the server); for the test split they are zipped into the file
the benchmark server accepts.

As :class:`~pointins.evaluation.coco.CocoEvaluator`: :meth:`reset`, :meth:`update` per batch,
:meth:`compute` once on every rank. Masks are kept as RLE until :meth:`compute`, which
gathers them on rank 0; only rank 0 writes files, in ``output_dir`` (never ``/tmp``):
``cityscapes_predictions/`` (removed afterwards unless ``keep_predictions``), the official
``cityscapes_results.json``, ``metrics.json`` and, for the test split,
``cityscapes_test_submission.zip``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import shutil
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as official
from cityscapesscripts.helpers.csHelpers import getCoreImageFileName
from cityscapesscripts.helpers.labels import id2label
from PIL import Image
from torch import Tensor

from pointins.evaluation.coco import encode_masks, save_metrics
from pointins.evaluation.distributed import evaluate_on_rank0

logger = logging.getLogger("pointins.evaluation")

PREDICTIONS_DIR = "cityscapes_predictions"
RESULTS_FILE = "cityscapes_results.json"
SUBMISSION_FILE = "cityscapes_test_submission.zip"
SUBMISSION_URL = "https://www.cityscapes-dataset.com/submit/"

# per image: (Cityscapes label id, score, compressed RLE) of each prediction
ImageResults = list[tuple[int, float, dict[str, Any]]]


@dataclass(frozen=True)
class CityscapesImage:
    """An evaluated image: its leftImg8bit file, size and gtFine instance-id PNG (None: test)."""

    file_name: str
    height: int
    width: int
    instance_file: str | None = None


class CityscapesEvaluator:
    """Accumulate per-image mask predictions and score them with the official script.

    Args:
        images: image id → :class:`CityscapesImage` of every image of the split.
        label_ids: ``label_ids[label]`` is the Cityscapes label id of training label ``label``.
        output_dir: the run directory; every file goes there.
        keep_predictions: keep ``cityscapes_predictions/`` after scoring.
    """

    def __init__(
        self,
        images: Mapping[int, CityscapesImage],
        label_ids: Sequence[int],
        output_dir: str | Path,
        keep_predictions: bool = False,
    ) -> None:
        unknown = [i for i in label_ids if i not in id2label or not id2label[i].hasInstances]
        if not label_ids or unknown:
            raise ValueError(
                f"CityscapesEvaluator: label_ids {list(label_ids)} must be non-empty Cityscapes "
                f"label ids of classes with instances (not {unknown}); see "
                "cityscapesscripts.helpers.labels"
            )
        if not images:
            raise ValueError("CityscapesEvaluator: no images to evaluate")
        with_gt = {img.instance_file is not None for img in images.values()}
        if len(with_gt) > 1:
            raise ValueError(
                "CityscapesEvaluator: give an instance_file for every image (val) or none (test)"
            )
        self.images = dict(images)
        self.label_ids = [int(i) for i in label_ids]
        self.output_dir = Path(output_dir)
        self.keep_predictions = bool(keep_predictions)
        self.has_ground_truth = with_gt == {True}
        # rank 0, after compute with ground truth: one row per label (class, AP, AP50,
        # instances), the rows of pointins.evaluation.coco.per_class_table
        self.per_class: list[dict[str, Any]] = []
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated predictions."""
        self._results: dict[int, ImageResults] = {}

    def update(self, image_ids: Sequence[int], predictions: Sequence[dict[str, Tensor]]) -> None:
        """Keep one batch of predictions: ``scores`` (n,), ``labels`` (n,) contiguous and
        ``masks`` (n, H0, W0) at the image's resolution (bool, uint8 or probabilities ≥ 0.5).
        An image seen twice (padding of a ``DistributedSampler``) is scored once."""
        if len(image_ids) != len(predictions):
            raise ValueError(
                f"CityscapesEvaluator.update: {len(image_ids)} image ids for "
                f"{len(predictions)} predictions."
            )
        for image_id, prediction in zip(image_ids, predictions, strict=True):
            image_id = int(image_id)
            if image_id not in self._results:
                self._results[image_id] = self._encode(image_id, prediction)

    def _encode(self, image_id: int, prediction: dict[str, Tensor]) -> ImageResults:
        image = self.images.get(image_id)
        if image is None:
            raise ValueError(f"CityscapesEvaluator: unknown image id {image_id}")
        if "masks" not in prediction:
            raise ValueError(
                "CityscapesEvaluator: Cityscapes' instance-level metric scores masks, and the "
                "predictions have none (mask=none?); train with a mask module"
            )
        masks = prediction["masks"].detach()
        labels = prediction["labels"].detach().cpu().long()
        scores = prediction["scores"].detach().cpu().tolist()
        n = labels.shape[0]
        expected = (n, image.height, image.width)
        if tuple(masks.shape) != expected or len(scores) != n:
            raise ValueError(
                f"CityscapesEvaluator: image {image.file_name}: masks {tuple(masks.shape)}, "
                f"scores ({len(scores)},) and labels ({n},) must be (n, height, width) = "
                f"{expected}, (n,) and (n,)"
            )
        bad = labels[(labels < 0) | (labels >= len(self.label_ids))]
        if bad.numel():
            raise ValueError(
                f"CityscapesEvaluator: label {int(bad[0])} is outside "
                f"0..{len(self.label_ids) - 1}; label_ids has {len(self.label_ids)} entries"
            )
        label_ids = [self.label_ids[label] for label in labels.tolist()]
        return list(zip(label_ids, scores, encode_masks(masks), strict=True))

    def compute(self, extra: Mapping[str, float] | None = None) -> dict[str, float]:
        """Gather, evaluate once on rank 0 and return the metrics (in percent) on every rank.

        Keys: ``cityscapes/AP``, ``cityscapes/AP50`` and ``cityscapes/AP/<class>``,
        ``cityscapes/AP50/<class>`` (NaN for a class without ground truth), plus ``extra``.
        The test split has no metrics: its submission zip is written instead. Rank 0
        fills :attr:`per_class` with one row per class: ``class``, ``AP``, ``AP50`` and
        ``instances``, the ground-truth instances the official script counts (instance
        ids, at least its minimum region size) in the evaluated images.
        """
        return evaluate_on_rank0(self._results, lambda parts: self._evaluate(parts, extra or {}))

    def _evaluate(
        self, parts: list[dict[int, ImageResults]], extra: Mapping[str, float]
    ) -> dict[str, float]:
        results: dict[int, ImageResults] = {}
        for part in parts:
            for image_id, image_results in part.items():
                results.setdefault(image_id, image_results)
        logger.info("Cityscapes evaluation on %d of the %d images", len(results), len(self.images))
        work_dir = self.output_dir / PREDICTIONS_DIR
        shutil.rmtree(work_dir, ignore_errors=True)  # an earlier evaluation of this run
        metrics: dict[str, float] = {}
        try:
            pred_files = self._write_predictions(work_dir, results)
            if not self.has_ground_truth:
                self._zip_submission(work_dir)
            elif results:
                metrics = self._score(work_dir, pred_files)
            else:
                logger.warning("Cityscapes: no image was evaluated; AP is 0.")
                metrics = dict.fromkeys(self.metric_names(), 0.0)
        finally:
            if not self.keep_predictions:
                shutil.rmtree(work_dir, ignore_errors=True)
        metrics.update({k: float(v) for k, v in extra.items()})
        save_metrics(metrics, self.output_dir / "metrics.json")
        return metrics

    def metric_names(self) -> list[str]:
        names = [id2label[i].name for i in self.label_ids]
        return ["cityscapes/AP", "cityscapes/AP50"] + [
            f"cityscapes/{kind}/{name}" for kind in ("AP", "AP50") for name in names
        ]

    def _write_predictions(
        self, work_dir: Path, results: Mapping[int, ImageResults]
    ) -> dict[int, Path]:
        """One ``<core>_pred.txt`` per image and one PNG per predicted mask (in ``masks/``)."""
        (work_dir / "masks").mkdir(parents=True)
        files = {}
        for image_id in sorted(results):
            core = getCoreImageFileName(self.images[image_id].file_name)
            lines = []
            for k, (label_id, score, rle) in enumerate(results[image_id]):
                name = f"masks/{core}_{k:03d}.png"
                mask = mask_util.decode(rle)  # (H, W) uint8 in {0, 1}
                Image.fromarray(mask * 255).save(work_dir / name, compress_level=1)
                lines.append(f"{name} {label_id} {score!r}\n")
            files[image_id] = work_dir / f"{core}_pred.txt"
            files[image_id].write_text("".join(lines))
        return files

    def _score(self, work_dir: Path, pred_files: Mapping[int, Path]) -> dict[str, float]:
        """Run ``evalInstanceLevelSemanticLabeling.evaluateImgLists`` on the written files."""
        gt_files = [str(self.images[i].instance_file) for i in sorted(pred_files)]
        args = official_args(work_dir, self.output_dir / RESULTS_FILE)
        averages = run_official(work_dir, gt_files, args)["averages"]
        names = [id2label[i].name for i in self.label_ids]
        metrics = averages_to_metrics(averages, names)
        counts = count_gt_instances(Path(args.gtInstancesFile), int(args.minRegionSizes[0]))
        self.per_class = [
            {
                "class": name,
                "AP": metrics[f"cityscapes/AP/{name}"],
                "AP50": metrics[f"cityscapes/AP50/{name}"],
                "instances": counts.get(name, 0),
            }
            for name in names
        ]
        rows = "\n".join(
            f"{name:>15} | {metrics[f'cityscapes/AP/{name}']:6.2f} | "
            f"{metrics[f'cityscapes/AP50/{name}']:6.2f}"
            for name in (id2label[i].name for i in self.label_ids)
        )
        logger.info(
            "Cityscapes instance-level AP (%%), official script:\n%15s |     AP |   AP50\n%s\n"
            "%15s | %6.2f | %6.2f",
            "class",
            rows,
            "average",
            metrics["cityscapes/AP"],
            metrics["cityscapes/AP50"],
        )
        return metrics

    def _zip_submission(self, work_dir: Path) -> Path:
        """The benchmark server's zip: the text files at the top, their masks in ``masks/``."""
        path = self.output_dir / SUBMISSION_FILE
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(work_dir.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(work_dir).as_posix())
        logger.info(
            "Cityscapes test submission: %s (%d images); upload it at %s",
            path.resolve(),
            len(list(work_dir.glob("*_pred.txt"))),
            SUBMISSION_URL,
        )
        return path


def official_args(prediction_dir: Path, export_file: Path) -> Any:
    """A copy of the official script's ``args`` reading predictions from ``prediction_dir``.

    Every file it writes is redirected there: the ground-truth cache ``gtInstances.json``
    (rebuilt on each call, so changed ground truth is never served from a stale cache),
    and the results JSON to ``export_file``. The module's global ``args`` is not touched.
    """
    args = copy.copy(official.args)
    args.predictionPath = str(prediction_dir.resolve())
    args.predictionWalk = None
    args.gtInstancesFile = str(prediction_dir.resolve() / "gtInstances.json")
    args.exportFile = str(Path(export_file).resolve())
    args.JSONOutput = True
    args.quiet = True
    args.colorized = False
    args.instLabels = []
    return args


def run_official(prediction_dir: Path, gt_files: list[str], args: Any) -> dict[str, Any]:
    """The official script's ``main``, made safe to call in-process: each ground-truth file's
    prediction is found by its own lookup (``<city>_<seq>_<frame>*.txt`` under
    ``args.predictionPath``, as for a submission), then ``evaluateImgLists`` scores them.

    It runs inside ``prediction_dir`` because it writes ``matches.json`` into the working
    directory; its ``printError`` (``sys.exit``) becomes a RuntimeError with the message.
    Returns the official results dict (``averages``, ``resultApMatrix``, ...).
    """
    output = io.StringIO()
    try:
        with (
            _numpy2_compat(),
            contextlib.chdir(prediction_dir),
            contextlib.redirect_stdout(output),
        ):
            prediction_files = [official.getPrediction(gt, args) for gt in gt_files]
            return official.evaluateImgLists(prediction_files, gt_files, args)
    except SystemExit as exit_:
        raise RuntimeError(
            f"cityscapesscripts evaluation failed: {output.getvalue().strip()}"
        ) from exit_


def averages_to_metrics(
    averages: Mapping[str, Any], class_names: Sequence[str]
) -> dict[str, float]:
    """The official ``averages`` dict (fractions) as ``cityscapes/...`` metrics in percent."""
    metrics = {
        "cityscapes/AP": 100 * float(averages["allAp"]),
        "cityscapes/AP50": 100 * float(averages["allAp50%"]),
    }
    for kind, key in (("AP", "ap"), ("AP50", "ap50%")):
        for name in class_names:
            value = float(averages["classes"][name][key])
            metrics[f"cityscapes/{kind}/{name}"] = value * 100 if not math.isnan(value) else value
    return metrics


def count_gt_instances(gt_instances_file: Path, min_region_size: int) -> dict[str, int]:
    """Class name -> ground-truth instances in the official script's ``gtInstances.json``
    that it scores: instance ids (≥ 1000, not groups) of at least ``min_region_size`` pixels."""
    gt = json.loads(gt_instances_file.read_text())  # gt file -> class name -> instances
    counts: dict[str, int] = {}
    for classes in gt.values():
        for name, instances in classes.items():
            kept = sum(
                i["instID"] >= 1000 and i["pixelCount"] >= min_region_size for i in instances
            )
            counts[name] = counts.get(name, 0) + kept
    return counts


@contextlib.contextmanager
def _numpy2_compat() -> Iterator[None]:
    """Run cityscapesscripts 2.3 under NumPy ≥ 2.4 for the duration of a call.

    - it calls ``np.in1d``, which NumPy 2.4 removed: lend ``np.isin(...).ravel()``, its
      documented replacement;
    - its ``writeDict2JSON`` serialises with ``default=lambda o: o.__dict__``, which fails on
      the NumPy integers that ``np.count_nonzero`` returns since 2.4: convert those with
      ``.item()`` (the numbers written are unchanged).
    Nothing is patched when the installed versions need it not.
    """
    lend_in1d = "in1d" not in np.__dict__
    if lend_in1d:
        np.in1d = lambda ar1, ar2, **kwargs: np.isin(ar1, ar2, **kwargs).ravel()
    write_json = official.writeDict2JSON
    official.writeDict2JSON = _write_json
    try:
        yield
    finally:
        official.writeDict2JSON = write_json
        if lend_in1d:
            del np.in1d


def _write_json(data: Any, file_name: str) -> None:
    """cityscapesscripts' ``writeDict2JSON``, also for NumPy scalars."""
    with open(file_name, "w") as f:
        json.dump(data, f, default=_to_json, sort_keys=True, indent=4)


def _to_json(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value.__dict__
