"""CityscapesEvaluator against hand-written instance-id maps and direct cityscapesscripts calls."""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as official
from cityscapesscripts.helpers.labels import name2label
from PIL import Image
from torch import Tensor

from pointins.evaluation import CityscapesEvaluator, CityscapesImage
from pointins.evaluation.cityscapes import _numpy2_compat
from pointins.evaluation.coco import per_class_table

H, W = 40, 60
LABEL_IDS = [name2label[n].id for n in ("person", "rider", "car", "truck", "bus", "train",
                                        "motorcycle", "bicycle")]  # fmt: skip
PERSON, CAR, BUS = (name2label[n].id for n in ("person", "car", "bus"))
ROAD, UNLABELED = name2label["road"].id, name2label["unlabeled"].id
# Instances ≥ 100 pixels: the official script does not count smaller ground truth.


def id_maps() -> dict[str, np.ndarray]:
    """Three frames: people, cars and a bus, a group of cars, void; the third has no thing."""
    a = np.full((H, W), ROAD, np.uint16)
    a[:3] = UNLABELED
    a[5:20, 2:12] = PERSON * 1000  # 150 px
    a[5:20, 14:24] = PERSON * 1000 + 1
    a[22:38, 30:55] = CAR * 1000  # 400 px
    b = np.full((H, W), ROAD, np.uint16)
    b[2:22, 5:25] = CAR * 1000
    b[25:39, 10:50] = BUS * 1000
    b[3:15, 35:55] = CAR  # a group of cars
    c = np.full((H, W), ROAD, np.uint16)
    return {"aachen_000000_000001": a, "aachen_000000_000002": b, "bremen_000000_000001": c}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[int, CityscapesImage]:
    root = tmp_path_factory.mktemp("cityscapes")
    out = {}
    for image_id, (core, ids) in enumerate(id_maps().items()):
        city = core.split("_")[0]
        (root / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
        gt = root / "gtFine" / "val" / city / f"{core}_gtFine_instanceIds.png"
        Image.fromarray(ids).save(gt)
        image = root / "leftImg8bit" / "val" / city / f"{core}_leftImg8bit.png"
        out[image_id] = CityscapesImage(str(image), H, W, str(gt))
    return out


def gt_predictions(image: CityscapesImage) -> dict[str, Tensor]:
    """The image's ground-truth instances as predictions with score 1."""
    ids = np.array(Image.open(image.instance_file), np.int64)
    instance_ids = [i for i in np.unique(ids) if i >= 1000]
    masks = torch.from_numpy(np.asarray([ids == i for i in instance_ids]).reshape(-1, H, W))
    labels = torch.tensor([LABEL_IDS.index(i // 1000) for i in instance_ids], dtype=torch.long)
    return {"masks": masks, "labels": labels, "scores": torch.ones(len(labels))}


def perturbed_predictions(image_id: int, image: CityscapesImage) -> dict[str, Tensor]:
    """Shifted masks, random scores, a wrong class, a false positive on road, one on void
    and one on the group of cars (both ignored by the official script), probabilities."""
    g = torch.Generator().manual_seed(image_id)
    gt = gt_predictions(image)
    masks = torch.roll(gt["masks"].float(), shifts=(image_id, 2 * image_id), dims=(1, 2))
    labels, scores = gt["labels"].clone(), torch.rand(len(gt["labels"]), generator=g)
    if image_id == 0:
        labels[1] = LABEL_IDS.index(CAR)  # a person called a car
    extra = torch.zeros(3, H, W)
    extra[0, 30:40, 0:15] = 0.9  # road: a false positive
    extra[1, 0:3, 20:50] = 0.9  # void: ignored
    extra[2, 3:15, 35:55] = 0.9  # the group of cars (image 1): ignored
    masks = torch.cat([masks, extra])
    labels = torch.cat([labels, torch.tensor([LABEL_IDS.index(CAR)] * 3)])
    scores = torch.cat([scores, torch.tensor([0.8, 0.95, 0.99])])
    return {"masks": masks, "labels": labels, "scores": scores}


def evaluate(images, out: Path, predictions: dict[int, dict[str, Tensor]], **kwargs):
    evaluator = CityscapesEvaluator(images, LABEL_IDS, out, **kwargs)
    evaluator.update(list(predictions), list(predictions.values()))
    return evaluator.compute()


def direct_official_ap(images, predictions, work: Path) -> dict:
    """``averages`` of the official script on prediction files written here, one at a time."""
    work.mkdir(parents=True)
    pred_files, gt_files = [], []
    for image_id, pred in predictions.items():
        image = images[image_id]
        core = Path(image.file_name).name.removesuffix("_leftImg8bit.png")
        lines = []
        for k in range(len(pred["scores"])):
            mask = (pred["masks"][k] >= 0.5).numpy().astype(np.uint8) * 255
            Image.fromarray(mask).save(work / f"{core}_{k}.png")
            label_id = LABEL_IDS[int(pred["labels"][k])]
            lines.append(f"{core}_{k}.png {label_id} {float(pred['scores'][k])}\n")
        (work / f"{core}.txt").write_text("".join(lines))
        pred_files.append(str(work / f"{core}.txt"))
        gt_files.append(image.instance_file)
    args = official.args  # the script's own settings, as its main() would use them
    saved = dict(vars(args))
    args.predictionPath, args.quiet = str(work), True
    args.gtInstancesFile, args.exportFile = str(work / "gt.json"), str(work / "results.json")
    cwd = os.getcwd()
    try:
        os.chdir(work)
        # the evaluator's NumPy 2.4 shim (np.in1d, NumPy ints in JSON): nothing of it is scored
        with _numpy2_compat(), contextlib.redirect_stdout(io.StringIO()):
            return official.evaluateImgLists(pred_files, gt_files, args)["averages"]
    finally:
        os.chdir(cwd)
        vars(args).update(saved)


def test_ground_truth_as_predictions_scores_100(images, tmp_path: Path) -> None:
    metrics = evaluate(images, tmp_path, {i: gt_predictions(img) for i, img in images.items()})
    present = {"person", "car", "bus"}
    for name in ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"):
        for kind in ("AP", "AP50"):
            value = metrics[f"cityscapes/{kind}/{name}"]
            assert value == 100.0 if name in present else np.isnan(value), (kind, name)
    assert metrics["cityscapes/AP"] == metrics["cityscapes/AP50"] == 100.0
    np.testing.assert_equal(json.loads((tmp_path / "metrics.json").read_text()), metrics)


def test_perturbed_predictions_match_direct_cityscapesscripts(images, tmp_path: Path) -> None:
    preds = {i: perturbed_predictions(i, img) for i, img in images.items()}
    metrics = evaluate(images, tmp_path / "run", preds)
    ref = direct_official_ap(images, preds, tmp_path / "direct")
    assert 0 < ref["allAp"] < ref["allAp50%"] < 1
    assert metrics["cityscapes/AP"] == 100 * ref["allAp"]
    assert metrics["cityscapes/AP50"] == 100 * ref["allAp50%"]
    for name, values in ref["classes"].items():
        np.testing.assert_equal(metrics[f"cityscapes/AP/{name}"], 100 * values["ap"])
        np.testing.assert_equal(metrics[f"cityscapes/AP50/{name}"], 100 * values["ap50%"])
    official_results = json.loads((tmp_path / "run" / "cityscapes_results.json").read_text())
    assert official_results["averages"]["allAp"] == ref["allAp"]


def test_groups_and_void_are_ignored_and_road_is_not(images, tmp_path: Path) -> None:
    gt = {i: gt_predictions(img) for i, img in images.items()}

    def with_false_positive(rows: slice, cols: slice) -> dict[int, dict[str, Tensor]]:
        fp = torch.zeros(1, H, W, dtype=torch.bool)
        fp[0, rows, cols] = True
        pred = gt[1]
        return {
            **gt,
            1: {
                "masks": torch.cat([pred["masks"], fp]),
                "labels": torch.cat([pred["labels"], torch.tensor([LABEL_IDS.index(CAR)])]),
                "scores": torch.cat([pred["scores"], torch.tensor([2.0])]),  # ranked first
            },
        }

    on_group = evaluate(images, tmp_path / "g", with_false_positive(slice(3, 15), slice(35, 55)))
    assert on_group["cityscapes/AP/car"] == 100.0
    on_road = evaluate(images, tmp_path / "r", with_false_positive(slice(22, 25), slice(0, 60)))
    assert on_road["cityscapes/AP/car"] < 100.0


def test_files_stay_in_the_run_directory(images, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the official script writes matches.json into the cwd
    run = tmp_path / "run"
    preds = {i: perturbed_predictions(i, img) for i, img in images.items()}
    evaluate(images, run, preds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in run.iterdir()) == ["cityscapes_results.json", "metrics.json"]

    evaluate(images, run, preds, keep_predictions=True)
    kept = run / "cityscapes_predictions"
    text = (kept / "aachen_000000_000001_pred.txt").read_text().splitlines()
    assert len(text) == len(preds[0]["scores"])
    path, label_id, score = text[0].split(" ")
    assert int(label_id) == PERSON and float(score) == pytest.approx(float(preds[0]["scores"][0]))
    mask = np.array(Image.open(kept / path))
    assert np.array_equal(mask != 0, (preds[0]["masks"][0] >= 0.5).numpy())


def test_test_split_writes_the_submission_zip(images, tmp_path: Path) -> None:
    test_images = {i: CityscapesImage(img.file_name, H, W) for i, img in images.items()}
    preds = {i: perturbed_predictions(i, img) for i, img in images.items()}
    evaluator = CityscapesEvaluator(test_images, LABEL_IDS, tmp_path)
    evaluator.update(list(preds), list(preds.values()))
    metrics = evaluator.compute(extra={"speed/images_per_second": 3.0})
    assert metrics == {"speed/images_per_second": 3.0}
    with zipfile.ZipFile(tmp_path / "cityscapes_test_submission.zip") as archive:
        names = set(archive.namelist())
        texts = sorted(n for n in names if n.endswith("_pred.txt"))
        assert texts == [f"{core}_pred.txt" for core in sorted(id_maps())]
        for text in texts:
            for line in archive.read(text).decode().splitlines():
                path, label_id, _ = line.split(" ")
                assert path in names and not os.path.isabs(path)
                assert int(label_id) in LABEL_IDS
    assert not (tmp_path / "cityscapes_predictions").exists()


def test_invalid_inputs_raise(images, tmp_path: Path) -> None:
    evaluator = CityscapesEvaluator(images, LABEL_IDS, tmp_path)
    pred = gt_predictions(images[0])
    with pytest.raises(ValueError, match="scores masks"):
        evaluator.update([0], [{k: v for k, v in pred.items() if k != "masks"}])
    with pytest.raises(ValueError, match=r"label 8 is outside 0\.\.7"):
        evaluator.update([0], [{**pred, "labels": torch.full_like(pred["labels"], 8)}])
    with pytest.raises(ValueError, match=r"masks \(3, 20, 30\)"):
        evaluator.update([0], [{**pred, "masks": torch.zeros(3, 20, 30)}])
    with pytest.raises(ValueError, match="unknown image id 7"):
        evaluator.update([7], [pred])
    with pytest.raises(ValueError, match=r"\[7\]"):
        CityscapesEvaluator(images, [7, *LABEL_IDS], tmp_path)  # road has no instances


def _ddp_worker(rank: int, init_file: str, images, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        image_ids = [[0, 1], [1, 2]][rank]  # image 1 on both, like DistributedSampler padding
        evaluator = CityscapesEvaluator(images, LABEL_IDS, out_dir)
        evaluator.update(image_ids, [perturbed_predictions(i, images[i]) for i in image_ids])
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(evaluator.compute()))
    finally:
        dist.destroy_process_group()


def test_distributed_gather_matches_single_process(images, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), images, str(out)), nprocs=2, join=True)
    single = evaluate(
        images, tmp_path / "single", {i: perturbed_predictions(i, img) for i, img in images.items()}
    )
    for rank in range(2):
        np.testing.assert_equal(json.loads((out / f"rank{rank}.json").read_text()), single)


def test_per_class_rows_and_table(images, tmp_path: Path) -> None:
    """Per class: the official AP and AP50 and the scored ground-truth instances (the group
    of cars is not one); found classes at 100, a class without ground truth empty."""
    evaluator = CityscapesEvaluator(images, LABEL_IDS, tmp_path)
    evaluator.update(list(images), [gt_predictions(img) for img in images.values()])
    metrics = evaluator.compute()
    rows = {row["class"]: row for row in evaluator.per_class}
    assert list(rows) == ["person", "rider", "car", "truck", "bus", "train", "motorcycle",
                          "bicycle"]  # fmt: skip
    assert {n: r["instances"] for n, r in rows.items() if r["instances"]} == {
        "person": 2,
        "car": 2,
        "bus": 1,
    }
    assert rows["car"]["AP"] == metrics["cityscapes/AP/car"] == 100.0
    assert rows["bus"]["AP50"] == 100.0
    table = per_class_table(evaluator.per_class)
    assert table.columns == ["class", "AP", "AP50", "instances"]
    assert table.data[1] == ["rider", None, None, 0]  # NaN: no rider in the ground truth
