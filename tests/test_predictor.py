"""A trained model from Python: every kind of image gives the same result as `eval.py
predict` and as the validation's results files, the checkpoint's own preprocessing is used
without any data config, and replacements and bad inputs are stated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from PIL import Image
from pycocotools import mask as mask_utils
from tiny import TINY_TRAINER

import eval as eval_entry
from pointins import Prediction, Predictor, Preprocess, draw
from pointins.inference.predictor import PreprocessMissing


@pytest.fixture(scope="module")
def trained(tiny_checkpoint):
    """(checkpoint, two embedded val images) of the TINY recipe."""
    ckpt, data = tiny_checkpoint("fcos")
    images = sorted((data / "shapes" / "images" / "val").iterdir())[:2]
    return ckpt, images


def _same(a: Prediction, b: Prediction) -> None:
    assert a.class_names == b.class_names and a.image_size == b.image_size
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key), rtol=0, atol=0, msg=key)


def test_checkpoint_stores_the_training_preprocessing(trained):
    ckpt, _ = trained
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert stored["preprocess"] == Preprocess(96, 128).to_dict()  # tests/tiny.py's data
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    assert predictor.preprocess == Preprocess(96, 128)
    assert predictor.class_names[:2] == ["disc", "triangle"]


def test_every_input_kind_gives_the_same_prediction(trained):
    ckpt, files = trained
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", score_thresh=0.0)
    by_path = predictor(list(files))
    pil = [Image.open(f).convert("RGB") for f in files]
    arrays = [np.asarray(img) for img in pil]  # (H, W, 3) uint8
    tensors = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]  # (3, H, W) uint8
    for kind in (pil, arrays, tensors, [str(f) for f in files]):
        for a, b in zip(by_path, predictor(kind), strict=True):
            _same(a, b)
    single = predictor(files[0])  # one image in, one Prediction out
    assert isinstance(single, Prediction) and len(single) > 0
    floats = predictor([t.float() / 255 for t in tensors])  # torchvision's float convention
    torch.testing.assert_close(floats[0].scores, by_path[0].scores, atol=1e-3, rtol=0)


def test_the_predictor_is_eval_py_predict(trained, compose_cfg, tmp_path):
    """`eval.py predict` with no experiment or data option: the stored preprocessing, and
    the Predictor's detections in predictions.json."""
    ckpt, files = trained
    folder = tmp_path / "in"
    folder.mkdir()
    for i, f in enumerate(files):
        (folder / f"{i}.jpg").write_bytes(f.read_bytes())
    cfg = compose_cfg(
        [f"ckpt_path={ckpt}", f"predict.input={folder}", "predict.score_thresh=0.0"], "eval"
    )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
        del cfg.hydra
    written = json.loads(eval_entry.predict(cfg).read_text())
    predictions = Predictor.from_checkpoint(ckpt, device="cpu", score_thresh=0.0)(list(files))
    for image_id, pred in enumerate(predictions):
        rows = [r for r in written if r["image_id"] == image_id]
        assert len(rows) == len(pred) > 0
        np.testing.assert_allclose([r["score"] for r in rows], pred.scores.numpy(), atol=1e-5)
        xywh = [r["bbox"] for r in rows]
        boxes = pred.boxes.numpy()
        np.testing.assert_allclose(np.array(xywh)[:, :2], boxes[:, :2], atol=0.01)
        np.testing.assert_allclose(np.array(xywh)[:, 2:], boxes[:, 2:] - boxes[:, :2], atol=0.01)
        masks = np.stack([mask_utils.decode(r["segmentation"]) for r in rows]).astype(bool)
        assert (masks == pred.masks.numpy()).all()


def test_the_predictor_reproduces_the_validation_results_files(tiny_checkpoint):
    """The final validation of the training run (after its last epoch, with the weights of
    last.ckpt, in fp32) wrote bbox.json and segm.json through the datamodule and the COCO
    evaluator; the Predictor, given the same image files and nothing else, finds the same
    detections: boxes (xywh there, xyxy here), scores, category ids (matched by class name
    in the annotation file) and mask pixels."""
    assert "trainer.precision=32-true" in TINY_TRAINER  # the files were written in fp32
    ckpt, data = tiny_checkpoint("fcos")
    run = ckpt.parents[1]
    bbox = json.loads((run / "bbox.json").read_text())
    segm = json.loads((run / "segm.json").read_text())
    shapes = data / "shapes"
    annotations = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    cat_id = {c["name"]: c["id"] for c in annotations["categories"]}
    images = annotations["images"]
    assert len(images) == 2

    predictor = Predictor.from_checkpoint(ckpt, device="cpu")  # the stored threshold: 0
    predictions = predictor([shapes / "images" / "val" / im["file_name"] for im in images])
    for image, pred in zip(images, predictions, strict=True):
        boxes = [r for r in bbox if r["image_id"] == image["id"]]
        masks = [r for r in segm if r["image_id"] == image["id"]]
        assert len(boxes) == len(masks) == len(pred) > 0
        assert pred.image_size == (image["height"], image["width"])
        x, y, w, h = np.array([r["bbox"] for r in boxes]).T
        np.testing.assert_allclose(pred.boxes.numpy(), np.stack([x, y, x + w, y + h], 1), atol=1e-4)
        for rows in (boxes, masks):
            np.testing.assert_allclose([r["score"] for r in rows], pred.scores.numpy(), atol=1e-6)
            assert [r["category_id"] for r in rows] == [cat_id[n] for n in pred.class_names]
        decoded = mask_utils.decode([r["segmentation"] for r in masks])  # (H, W, n)
        assert decoded.any()
        np.testing.assert_array_equal(decoded.transpose(2, 0, 1).astype(bool), pred.masks.numpy())


def test_replacements_apply_and_are_logged(trained, caplog):
    ckpt, files = trained
    with caplog.at_level("WARNING", logger="pointins.inference.predictor"):
        predictor = Predictor.from_checkpoint(
            ckpt, device="cpu", preprocess={"test_scale": 64}, score_thresh=0.5
        )
    assert "test_scale 96 (training) -> 64" in caplog.text
    assert predictor.preprocess.test_scale == 64 and predictor.preprocess.max_size == 128
    assert predictor.model.detector.postprocess.score_thresh == 0.5
    low = Predictor.from_checkpoint(ckpt, device="cpu", score_thresh=0.0)(files[0])
    high = predictor(files[0])
    # no bound on high.scores: the threshold is on the classification score, and FCOS
    # reports sqrt(cls * ctr), which may be lower
    assert len(high) < len(low)
    strict = Predictor.from_checkpoint(ckpt, device="cpu", score_thresh=0.0, mask_thresh=0.9)
    loose = Predictor.from_checkpoint(ckpt, device="cpu", score_thresh=0.0, mask_thresh=0.1)
    assert strict(files[0]).masks.sum() < loose(files[0]).masks.sum()


def test_rle_and_drawing(trained):
    ckpt, files = trained
    result = Predictor.from_checkpoint(ckpt, device="cpu", score_thresh=0.0)(files[0])
    decoded = np.stack([mask_utils.decode(r) for r in result.rle()]).astype(bool)
    assert (decoded == result.masks.numpy()).all()
    picture = draw(files[0], result, score_thresh=0.0)
    assert picture.size == Image.open(files[0]).size
    assert np.asarray(picture).tolist() != np.asarray(Image.open(files[0]).convert("RGB")).tolist()


def test_bad_inputs_are_named(trained, tmp_path):
    ckpt, _ = trained
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        predictor(tmp_path / "missing.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg is not a readable image"):
        predictor(tmp_path / "broken.jpg")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) RGB, got shape \(8, 8, 4\)"):
        predictor(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(TypeError, match="cannot read an image from dict"):
        predictor({"image": 1})


def test_a_checkpoint_without_preprocessing_asks_for_it(trained, tmp_path):
    ckpt, files = trained
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    del saved["hyper_parameters"]["preprocess"]
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)
    with pytest.raises(PreprocessMissing, match="stores no preprocessing.*preprocess=Preprocess"):
        Predictor.from_checkpoint(old, device="cpu")
    given = Predictor.from_checkpoint(old, device="cpu", preprocess=Preprocess(96, 128))
    assert given.preprocess == Preprocess(96, 128)
