"""CocoEvaluator against a hand-written COCO file and direct pycocotools calls."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from pytorch_lightning.loggers import CSVLogger
from recorders import RecordingWandbLogger
from torch import Tensor

from pointins.evaluation import CocoEvaluator, encode_masks
from pointins.evaluation.coco import log_per_class_table, per_class_table

LABEL_TO_CAT = [3, 7, 12]  # non-contiguous category ids
CAT_TO_LABEL = {c: label for label, c in enumerate(LABEL_TO_CAT)}
IMAGE_IDS = [1, 2, 5, 9]
AP_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
MISSED_ANN = 503  # left out of the perturbed predictions
# image id -> (xyxy box, label, score) of a false positive in the perturbed predictions
FALSE_POSITIVES = {1: ([50.0, 40.0, 70.0, 55.0], 2, 0.7), 9: ([5.0, 5.0, 20.0, 20.0], 0, 0.9)}


def _block_rle(h: int, w: int, x0: int, y0: int, bw: int, bh: int) -> dict[str, Any]:
    """Uncompressed (column-major) RLE of the block [x0, x0 + bw) x [y0, y0 + bh)."""
    counts = [x0 * h + y0]
    for col in range(bw):
        last = h * w - (x0 + bw - 1) * h - y0 - bh
        counts += [bh, h - bh if col < bw - 1 else last]
    return {"size": [h, w], "counts": counts}


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _ann(i: int, image: int, cat: int, segm: Any, bbox: list[float], area: float, crowd=0):
    return {
        "id": i,
        "image_id": image,
        "category_id": cat,
        "segmentation": segm,
        "bbox": bbox,
        "area": area,
        "iscrowd": crowd,
    }


ANNOTATIONS = {
    "images": [
        {"id": 1, "width": 80, "height": 60, "file_name": "a.jpg"},
        {"id": 2, "width": 40, "height": 50, "file_name": "b.jpg"},
        {"id": 5, "width": 110, "height": 120, "file_name": "c.jpg"},
        {"id": 9, "width": 45, "height": 30, "file_name": "empty.jpg"},
    ],
    "categories": [
        {"id": 3, "name": "cat", "supercategory": "animal"},
        {"id": 7, "name": "dog", "supercategory": "animal"},
        {"id": 12, "name": "bird", "supercategory": "animal"},
    ],
    "annotations": [
        _ann(101, 1, 3, [_rect(10, 5, 30, 25)], [10, 5, 20, 20], 400),
        _ann(102, 1, 7, [[40, 10, 70, 10, 55, 40]], [40, 10, 30, 30], 450),
        _ann(103, 1, 3, _block_rle(60, 80, 5, 40, 16, 16), [5, 40, 16, 16], 256, crowd=1),
        _ann(201, 2, 12, _block_rle(50, 40, 4, 10, 16, 30), [4, 10, 16, 30], 480),
        _ann(202, 2, 7, [_rect(22, 2, 36, 12), _rect(24, 30, 34, 45)], [22, 2, 14, 43], 290),
        _ann(501, 5, 12, [_rect(5, 10, 105, 110)], [5, 10, 100, 100], 10000),  # large
        _ann(502, 5, 3, [_rect(20, 20, 60, 60)], [20, 20, 40, 40], 1600),  # medium
        _ann(503, 5, 7, [_rect(70, 70, 85, 80)], [70, 70, 15, 10], 150),
    ],
}


@pytest.fixture(scope="module")
def ann_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("coco") / "instances_val.json"
    path.write_text(json.dumps(ANNOTATIONS))
    return path


@pytest.fixture(scope="module")
def coco(ann_file: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def _gt_predictions(coco: COCO, image_id: int) -> dict[str, Tensor]:
    """The non-crowd ground truth of one image, as predictions with score 1."""
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    image = coco.imgs[image_id]
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
    masks = [torch.from_numpy(coco.annToMask(a)) for a in anns]
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.ones(len(anns)),
        "labels": torch.tensor([CAT_TO_LABEL[a["category_id"]] for a in anns], dtype=torch.long),
        "masks": torch.stack(masks)
        if masks
        else torch.zeros(0, image["height"], image["width"], dtype=torch.uint8),
    }


def _perturbed_predictions(coco: COCO, image_id: int) -> dict[str, Tensor]:
    """Ground truth with jittered boxes, eroded or shifted masks, random scores, one
    object missed and false positives; image 1 gives float probabilities as masks."""
    g = torch.Generator().manual_seed(image_id)
    gt = _gt_predictions(coco, image_id)
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    keep = torch.tensor([a["id"] != MISSED_ANN for a in anns], dtype=torch.bool)
    n = int(keep.sum())
    boxes = gt["boxes"][keep] + torch.randint(-4, 5, (n, 4), generator=g) * 0.5
    masks = gt["masks"][keep].float()  # (n, H, W)
    eroded = -F.max_pool2d(-masks[:, None], 3, stride=1, padding=1)[:, 0]
    shifted = torch.roll(masks, shifts=(1, 2), dims=(1, 2))
    masks = torch.where((torch.arange(n) % 2 == 1)[:, None, None], shifted, eroded).bool()
    labels, scores = gt["labels"][keep], torch.rand(n, generator=g)
    if image_id in FALSE_POSITIVES:
        box, label, score = FALSE_POSITIVES[image_id]
        x0, y0, x1, y1 = (int(v) for v in box)
        fp_mask = torch.zeros(1, *masks.shape[1:], dtype=torch.bool)
        fp_mask[:, y0:y1, x0:x1] = True
        boxes = torch.cat([boxes, torch.tensor([box])])
        masks = torch.cat([masks, fp_mask])
        labels = torch.cat([labels, torch.tensor([label])])
        scores = torch.cat([scores, torch.tensor([score])])
    if image_id == 1:
        masks = masks.float() * 0.9 + 0.05  # probabilities, thresholded at 0.5
    return {"boxes": boxes, "scores": scores, "labels": labels, "masks": masks}


def _reference_results(predictions: dict[int, dict[str, Tensor]], iou_type: str) -> list[dict]:
    """COCO result dicts built one detection at a time, independently of the evaluator."""
    results = []
    for image_id, pred in predictions.items():
        for i in range(len(pred["scores"])):
            det = {
                "image_id": image_id,
                "category_id": LABEL_TO_CAT[int(pred["labels"][i])],
                "score": float(pred["scores"][i]),
            }
            if iou_type == "bbox":
                x1, y1, x2, y2 = pred["boxes"][i].tolist()
                det["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            else:
                binary = (pred["masks"][i] >= 0.5).numpy().astype(np.uint8)
                rle = mask_util.encode(np.asfortranarray(binary))
                det["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            results.append(det)
    return results


def _pycocotools_ap(coco: COCO, dets: list[dict], iou_type: str, image_ids: list[int]):
    """AP metrics in percent from a plain loadRes + COCOeval + summarize."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco, coco.loadRes(dets), iou_type)
        coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {name: float(coco_eval.stats[i] * 100) for i, name in enumerate(AP_NAMES)}


def dets_of(out: Path, iou_type: str) -> list[dict]:
    return json.loads((out / f"{iou_type}.json").read_text())


def _evaluate(ann_file: Path, out: Path, predictions: dict[int, dict[str, Tensor]], **kw):
    evaluator = CocoEvaluator(ann_file, LABEL_TO_CAT, out, **kw)
    evaluator.update(list(predictions), list(predictions.values()))
    return evaluator.compute()


CLASS_NAMES = ["cat", "dog", "bird"]  # of LABEL_TO_CAT


def _keys(iou_types: tuple[str, ...]) -> set[str]:
    per_class = [f"AP-{name}" for name in CLASS_NAMES]
    return {f"{t}/{name}" for t in iou_types for name in [*AP_NAMES, *per_class]}


def test_ground_truth_as_predictions_scores_100(ann_file: Path, coco: COCO, tmp_path: Path):
    preds = {i: _gt_predictions(coco, i) for i in IMAGE_IDS}
    metrics = _evaluate(ann_file, tmp_path, preds)
    assert metrics.keys() == _keys(("bbox", "segm"))
    assert metrics == pytest.approx(dict.fromkeys(metrics, 100.0))


def test_perturbed_predictions_match_direct_pycocotools(ann_file: Path, coco: COCO, tmp_path):
    preds = {i: _perturbed_predictions(coco, i) for i in IMAGE_IDS}
    metrics = _evaluate(ann_file, tmp_path, preds)
    for iou_type in ("bbox", "segm"):
        ref = _pycocotools_ap(coco, _reference_results(preds, iou_type), iou_type, IMAGE_IDS)
        assert 0 < ref["AP"] < 100
        assert {n: metrics[f"{iou_type}/{n}"] for n in AP_NAMES} == ref  # exactly
    # max_dets above the per-image count changes nothing (summarize would report -1 here)
    assert _evaluate(ann_file, tmp_path / "200", preds, max_dets=200) == metrics


def test_result_files_and_category_ids(ann_file: Path, coco: COCO, tmp_path: Path):
    masks = torch.zeros(3, 60, 80, dtype=torch.bool)
    masks[0, :10, :10], masks[1, 20:30, 5:50], masks[2, 40:, 60:] = True, True, True
    pred = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 20.0, 50.0, 30.0], [60, 40, 80, 60]]),
        "scores": torch.tensor([0.5, 0.25, 0.75]),
        "labels": torch.tensor([2, 0, 1]),
        "masks": masks,
    }
    metrics = _evaluate(ann_file, tmp_path, {1: pred})

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved.keys() == _keys(("bbox", "segm"))
    np.testing.assert_equal(saved, metrics)  # NaN for the area ranges without ground truth
    bbox = json.loads((tmp_path / "bbox.json").read_text())
    segm = json.loads((tmp_path / "segm.json").read_text())
    for dets in (bbox, segm):
        assert [d["category_id"] for d in dets] == [12, 3, 7]
        assert [d["score"] for d in dets] == [0.5, 0.25, 0.75]
        assert {d["image_id"] for d in dets} == {1}
    assert [d["bbox"] for d in bbox] == [[0, 0, 10, 10], [5, 20, 45, 10], [60, 40, 20, 20]]
    decoded = mask_util.decode([d["segmentation"] for d in segm])  # (H, W, n)
    assert np.array_equal(decoded, masks.permute(1, 2, 0).numpy())


def test_percent_scale(ann_file: Path, coco: COCO, tmp_path: Path):
    preds = {i: _perturbed_predictions(coco, i) for i in IMAGE_IDS}
    metrics = _evaluate(ann_file, tmp_path, preds)
    assert all(0 <= v <= 100 for v in metrics.values())
    assert metrics["bbox/AP50"] > 1 and metrics["segm/AP50"] > 1  # percent, not fractions


def test_empty_predictions_give_zeros(ann_file: Path, coco: COCO, tmp_path: Path, caplog):
    empty = {
        i: {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.long),
            "masks": torch.zeros(0, coco.imgs[i]["height"], coco.imgs[i]["width"]),
        }
        for i in IMAGE_IDS
    }
    with caplog.at_level(logging.WARNING, logger="pointins.evaluation"):
        metrics = _evaluate(ann_file, tmp_path, empty)
    assert metrics == dict.fromkeys(_keys(("bbox", "segm")), 0.0)
    assert "no predictions" in caplog.text
    assert json.loads((tmp_path / "bbox.json").read_text()) == []
    assert json.loads((tmp_path / "segm.json").read_text()) == []

    nothing = CocoEvaluator(ann_file, LABEL_TO_CAT, tmp_path / "none").compute()
    assert nothing == dict.fromkeys(_keys(("bbox", "segm")), 0.0)


def test_boxes_only_skips_segm(ann_file: Path, coco: COCO, tmp_path: Path):
    preds = {i: _gt_predictions(coco, i) for i in IMAGE_IDS}
    for pred in preds.values():
        del pred["masks"]
    metrics = _evaluate(ann_file, tmp_path, preds)
    assert metrics == pytest.approx(dict.fromkeys(_keys(("bbox",)), 100.0))
    assert not (tmp_path / "segm.json").exists()


def test_subset_of_images_scores_only_those(ann_file: Path, coco: COCO, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pointins.evaluation"):
        metrics = _evaluate(ann_file, tmp_path, {5: _gt_predictions(coco, 5)})
    assert metrics == pytest.approx(dict.fromkeys(_keys(("bbox", "segm")), 100.0))
    assert "1 of the 4 images" in caplog.text

    preds = {i: _perturbed_predictions(coco, i) for i in (1, 2)}
    metrics = _evaluate(ann_file, tmp_path, preds)
    ref = _pycocotools_ap(coco, _reference_results(preds, "segm"), "segm", [1, 2])
    # no medium or large object in images 1 and 2: pycocotools says -1, the evaluator NaN
    assert ref["APm"] == ref["APl"] == -100
    ref.update(APm=float("nan"), APl=float("nan"))
    np.testing.assert_equal({n: metrics[f"segm/{n}"] for n in AP_NAMES}, ref)  # NaN == NaN


def test_image_info_file_writes_results_for_the_server_and_scores_nothing(
    coco: COCO, tmp_path: Path, caplog
):
    """A file without "annotations" (COCO's image_info_test-dev2017.json): the result files
    hold every detection under its image and category ids, and no AP is reported."""
    info = tmp_path / "image_info_test.json"
    info.write_text(json.dumps({k: v for k, v in ANNOTATIONS.items() if k != "annotations"}))
    preds = {i: _gt_predictions(coco, i) for i in IMAGE_IDS}
    evaluator = CocoEvaluator(info, LABEL_TO_CAT, tmp_path / "out")
    evaluator.update(list(preds), list(preds.values()))
    with caplog.at_level(logging.INFO, logger="pointins.evaluation"):
        metrics = evaluator.compute(extra={"speed/images_per_second": 2.5})
    assert metrics == {"speed/images_per_second": 2.5}
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    assert "no 'annotations'" in caplog.text and "nothing scored" in caplog.text
    for iou_type in ("bbox", "segm"):
        dets = json.loads((tmp_path / "out" / f"{iou_type}.json").read_text())
        ref = _reference_results(preds, iou_type)
        key = ("image_id", "category_id", "score")
        assert [tuple(d[k] for k in key) for d in dets] == [tuple(r[k] for k in key) for r in ref]
        assert {d["category_id"] for d in dets} == {3, 7, 12}
    np.testing.assert_allclose(
        [d["bbox"] for d in dets_of(tmp_path / "out", "bbox")],
        [r["bbox"] for r in _reference_results(preds, "bbox")],
    )
    segm = dets_of(tmp_path / "out", "segm")
    for det, ref in zip(segm, _reference_results(preds, "segm"), strict=True):
        decoded = mask_util.decode(det["segmentation"])
        assert np.array_equal(decoded, mask_util.decode(ref["segmentation"]))


def test_invalid_inputs_raise(ann_file: Path, coco: COCO, tmp_path: Path):
    evaluator = CocoEvaluator(ann_file, LABEL_TO_CAT, tmp_path)
    pred = _gt_predictions(coco, 1)
    with pytest.raises(ValueError, match=r"label 3 is outside 0\.\.2"):
        evaluator.update([1], [{**pred, "labels": torch.tensor([0, 3])}])
    with pytest.raises(ValueError, match=rf"image id 4 is not in .*{ann_file.name}"):
        evaluator.update([4], [pred])
    with pytest.raises(ValueError, match=r"masks \(2, 30, 40\) must be"):
        evaluator.update([1], [{**pred, "masks": torch.zeros(2, 30, 40)}])
    with pytest.raises(ValueError, match=r"\[99\]"):
        CocoEvaluator(ann_file, [3, 7, 99], tmp_path).update([1], [pred])


def test_encode_masks_round_trip():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 7, 11, generator=g)
    expected = (probs >= 0.5).numpy().astype(np.uint8)
    for masks in (probs, probs >= 0.5, (probs >= 0.5).to(torch.uint8) * 3):
        rles = encode_masks(masks)
        assert all(isinstance(r["counts"], str) for r in rles)
        decoded = mask_util.decode(rles)  # (H, W, n)
        assert np.array_equal(decoded.transpose(2, 0, 1), expected)
    assert encode_masks(torch.zeros(0, 7, 11)) == []


def _ddp_worker(rank: int, init_file: str, ann_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(ann_file)
        image_ids = [[1, 5, 2], [2, 9]][rank]  # image 2 on both, like DistributedSampler padding
        evaluator = CocoEvaluator(ann_file, LABEL_TO_CAT, out_dir)
        evaluator.update(image_ids, [_perturbed_predictions(coco, i) for i in image_ids])
        metrics = evaluator.compute()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def test_distributed_gather_matches_single_process(ann_file: Path, coco: COCO, tmp_path: Path):
    out = tmp_path / "ddp"
    mp.spawn(
        _ddp_worker, args=(str(tmp_path / "init"), str(ann_file), str(out)), nprocs=2, join=True
    )
    single = _evaluate(
        ann_file, tmp_path / "single", {i: _perturbed_predictions(coco, i) for i in IMAGE_IDS}
    )
    for rank in range(2):
        assert json.loads((out / f"rank{rank}.json").read_text()) == single
    assert json.loads((out / "metrics.json").read_text()) == single
    ddp_bbox = json.loads((out / "bbox.json").read_text())
    assert ddp_bbox == json.loads((tmp_path / "single" / "bbox.json").read_text())


def test_predictions_stream_to_disk_and_are_removed(ann_file: Path, coco: COCO, tmp_path: Path):
    """The loop holds no result dicts in memory: they go to a JSON-lines file in the
    output folder, which ``compute`` reads back and removes."""
    evaluator = CocoEvaluator(ann_file, LABEL_TO_CAT, tmp_path)
    for image_id in IMAGE_IDS:
        evaluator.update([image_id], [_gt_predictions(coco, image_id)])
    (spill,) = tmp_path.glob(".predictions-*.jsonl")
    assert len(spill.read_text().splitlines()) == len(IMAGE_IDS)
    assert not hasattr(evaluator, "_results")
    metrics = evaluator.compute()
    assert metrics["segm/AP"] == pytest.approx(100.0)
    assert not list(tmp_path.glob(".predictions-*"))
    # a dropped evaluator leaves no file behind either
    evaluator.update([1], [_gt_predictions(coco, 1)])
    del evaluator
    assert not list(tmp_path.glob(".predictions-*"))


def test_per_class_ap_one_class_perfect_one_missed(tmp_path: Path):
    """Two classes, one ground-truth instance each: the found one scores AP 100, the
    missed one 0, in the returned metrics, metrics.json and the per-class rows."""
    ann_file = tmp_path / "two.json"
    ann_file.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "width": 40, "height": 30, "file_name": "a.jpg"}],
                "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}],
                "annotations": [
                    _ann(1, 1, 1, [_rect(2, 2, 12, 12)], [2, 2, 10, 10], 100),
                    _ann(2, 1, 2, [_rect(20, 5, 30, 25)], [20, 5, 10, 20], 200),
                    _ann(3, 1, 2, [_rect(0, 20, 8, 28)], [0, 20, 8, 8], 64, crowd=1),
                ],
            }
        )
    )
    mask = torch.zeros(1, 30, 40, dtype=torch.bool)
    mask[0, 2:12, 2:12] = True
    car = {
        "boxes": torch.tensor([[2.0, 2.0, 12.0, 12.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([0]),
        "masks": mask,
    }
    evaluator = CocoEvaluator(ann_file, [1, 2], tmp_path / "out")
    evaluator.update([1], [car])
    metrics = evaluator.compute()
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for iou_type in ("bbox", "segm"):
        for source in (metrics, saved):
            assert source[f"{iou_type}/AP-car"] == pytest.approx(100.0)
            assert source[f"{iou_type}/AP-person"] == 0.0
        assert metrics[f"{iou_type}/AP"] == pytest.approx(50.0)
    assert evaluator.per_class == [
        {
            "class": "car",
            "bbox AP": pytest.approx(100.0),
            "segm AP": pytest.approx(100.0),
            "instances": 1,
        },
        {"class": "person", "bbox AP": 0.0, "segm AP": 0.0, "instances": 1},  # crowd not counted
    ]
    table = per_class_table(evaluator.per_class)
    assert table.columns == ["class", "bbox AP", "segm AP", "instances"]
    assert [row[0] for row in table.data] == ["car", "person"]


def test_per_class_ap_is_nan_for_a_class_without_ground_truth(ann_file: Path, coco, tmp_path):
    metrics = _evaluate(ann_file, tmp_path, {1: _gt_predictions(coco, 1)})  # no bird in 1
    assert metrics["segm/AP-cat"] == pytest.approx(100.0)
    assert np.isnan(metrics["segm/AP-bird"])
    assert per_class_table([{"class": "bird", "AP": float("nan")}]).data == [["bird", None]]


def test_per_class_table_goes_to_wandb_loggers_only():
    rows = [{"class": "car", "bbox AP": 50.0, "segm AP": 40.0, "instances": 3}]
    recorder = RecordingWandbLogger()
    log_per_class_table([CSVLogger("unused"), recorder], rows, step=5)
    (logged,) = recorder.logged
    assert logged["trainer/global_step"] == 5
    assert logged["val/per_class_ap"].data == [["car", 50.0, 40.0, 3]]
    log_per_class_table([CSVLogger("unused")], rows, step=6)  # nothing to log to: no error


def _precision_per_class(coco: COCO, dets: list[dict], iou_type: str) -> dict[int, float]:
    """Per category id: the mean of COCOeval's ``precision[:, :, k, area all, maxDets 100]``
    over its valid (> -1) entries, in percent; NaN where none is valid."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco, coco.loadRes(dets), iou_type)
        coco_eval.params.imgIds = IMAGE_IDS
        coco_eval.evaluate()
        coco_eval.accumulate()
    params = coco_eval.params
    assert params.areaRngLbl[0] == "all" and params.maxDets[-1] == 100
    out = {}
    for k, cat_id in enumerate(params.catIds):
        p = coco_eval.eval["precision"][:, :, k, 0, -1]  # (T, R)
        out[cat_id] = float(p[p > -1].mean() * 100) if (p > -1).any() else float("nan")
    return out


def _jittered_predictions(coco: COCO, image_id: int) -> dict[str, Tensor]:
    """Every non-crowd GT but one, its box jittered by up to +-3 px (a seeded generator)
    and its mask cut to the jittered box, a false positive of a present and of an absent
    class, random scores."""
    g = torch.Generator().manual_seed(100 + image_id)
    gt = _gt_predictions(coco, image_id)
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    keep = torch.tensor([a["id"] != MISSED_ANN for a in anns], dtype=torch.bool)
    n = int(keep.sum())
    image = coco.imgs[image_id]
    h, w = image["height"], image["width"]
    boxes = gt["boxes"][keep] + (torch.rand(n, 4, generator=g) - 0.5) * 6
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([w, h, w, h], dtype=boxes.dtype))
    ys, xs = torch.arange(h)[:, None] + 0.5, torch.arange(w)[None] + 0.5
    inside = (
        (xs >= boxes[:, 0, None, None])
        & (xs <= boxes[:, 2, None, None])
        & (ys >= boxes[:, 1, None, None])
        & (ys <= boxes[:, 3, None, None])
    )  # (n, H, W)
    masks = gt["masks"][keep].bool() & inside
    labels, scores = gt["labels"][keep], torch.rand(n, generator=g) * 0.8 + 0.1
    fp_boxes = torch.tensor([[0.0, 0.0, w / 3, h / 3], [w / 2, h / 2, w - 1.0, h - 1.0]])
    fp_masks = torch.zeros(2, h, w, dtype=torch.bool)
    fp_masks[0, : h // 3, : w // 3] = fp_masks[1, h // 2 : h - 1, w // 2 : w - 1] = True
    fp_labels = torch.tensor([0, 2])  # cat and bird: absent from some images
    fp_scores = torch.rand(2, generator=g)
    return {
        "boxes": torch.cat([boxes, fp_boxes]),
        "scores": torch.cat([scores, fp_scores]),
        "labels": torch.cat([labels, fp_labels]),
        "masks": torch.cat([masks, fp_masks]),
    }


def test_per_class_ap_is_pycocotools_precision_per_category(ann_file: Path, coco, tmp_path):
    """``{iou_type}/AP-<name>``: the class's slice of pycocotools' accumulated precision
    (all IoU thresholds and recall points, area "all", 100 detections), averaged over its
    valid entries, for imperfect predictions of three classes."""
    preds = {i: _jittered_predictions(coco, i) for i in IMAGE_IDS}
    metrics = _evaluate(ann_file, tmp_path, preds)
    names = {c["id"]: c["name"] for c in ANNOTATIONS["categories"]}
    for iou_type in ("bbox", "segm"):
        ref = _precision_per_class(coco, _reference_results(preds, iou_type), iou_type)
        assert all(0 < v < 100 for v in ref.values()), ref  # none trivially 0 or 100
        assert len({round(v, 6) for v in ref.values()}) == 3  # a swap of classes shows
        for cat_id, value in ref.items():
            assert metrics[f"{iou_type}/AP-{names[cat_id]}"] == pytest.approx(value, abs=1e-9)
        # every class has ground truth (all entries valid): the summary AP is their mean
        assert metrics[f"{iou_type}/AP"] == pytest.approx(np.mean(list(ref.values())), abs=1e-9)
