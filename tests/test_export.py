"""ONNX export: the exported graph passes onnx.checker and onnxruntime gives the detections
and masks of the PyTorch model on the embedded val images, for both detectors and both
template reads, at any input size; the command line says what is wrong."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from pointins import Predictor
from pointins.inference.export import OnnxPredictor, export_onnx, main
from pointins.inference.predictor import load_image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _matched(torch_pred, onnx_pred) -> None:
    """Same detections: each PyTorch detection has an ONNX one of its label with every box
    side within a pixel, its score within 1e-3 and a mask differing in at most 1 % of the
    two masks' union, or 2 pixels for tiny masks (a pixel whose probability sits at the
    threshold may land on either side of it)."""
    assert len(onnx_pred) == len(torch_pred) > 0
    iou = box_iou(torch_pred.boxes, onnx_pred.boxes)  # (n, n)
    same_label = torch_pred.labels[:, None] == onnx_pred.labels[None, :]
    best = (iou * same_label).argmax(1)  # (n,)
    assert (torch_pred.boxes - onnx_pred.boxes[best]).abs().max() < 1.0
    torch.testing.assert_close(torch_pred.scores, onnx_pred.scores[best], atol=1e-3, rtol=0)
    a, b = torch_pred.masks, onnx_pred.masks[best]  # (n, H, W) bool
    differ = (a ^ b).flatten(1).sum(1).float()  # (n,)
    union = (a | b).flatten(1).sum(1).float()  # (n,)
    allowed = torch.clamp(0.01 * union, min=2.0)
    assert (differ <= allowed).all(), (differ.max(), union[(differ - allowed).argmax()])


POINT = ("mask=pointins_small",)  # the paper's point templates; TINY's default reads the box


@pytest.mark.parametrize(
    ("detector", "overrides"), [("fcos", POINT), ("retinanet", POINT), ("fcos", ())]
)
def test_onnxruntime_matches_pytorch_on_the_val_images(
    tiny_checkpoint, tmp_path, detector, overrides
):
    ckpt, data = tiny_checkpoint(detector, *overrides)
    out = main([f"ckpt_path={ckpt}", f"out={tmp_path / 'model.onnx'}"])
    files = sorted((data / "shapes" / "images" / "val").iterdir())
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", batch_size=1)
    onnx_predictor = OnnxPredictor(out)
    assert onnx_predictor.class_names == predictor.class_names and onnx_predictor.canvas is None
    for file in files:  # sizes unlike the synthetic square the graph was traced with
        _matched(predictor(file), onnx_predictor(file))


@pytest.mark.parametrize("overrides", [POINT, ()], ids=["point", "box"])
def test_the_graph_returns_each_images_own_number_of_detections(
    tiny_checkpoint, tmp_path, overrides
):
    """Traced on one image, the graph serves images with more and fewer detections (a score
    threshold near the median of the traced image's best classification scores makes the
    counts differ; FCOS thresholds sigmoid(cls), not the reported sqrt(cls * ctr))."""
    ckpt, data = tiny_checkpoint("fcos", *overrides)
    files = sorted((data / "shapes" / "images" / "train").iterdir())
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", batch_size=1)
    num = len(predictor(files[0]))  # at the checkpoint's threshold 0
    model = predictor.model
    batch, _ = predictor.preprocess.batch([load_image(files[0])])  # (1, 3, H, W)
    with torch.no_grad():
        cls_logits = model.detector(model.features(batch)).cls_logits  # [(1, HWA, C)]
    cls = torch.cat([c.flatten() for c in cls_logits]).sigmoid().topk(num).values  # (n,)
    half = num // 2  # a threshold midway between two scores, not at one
    model.detector.postprocess.score_thresh = float(cls[half - 1 : half + 1].mean())
    out = export_onnx(
        predictor.model,
        predictor.preprocess,
        tmp_path / "model.onnx",
        predictor.class_names,
        example=load_image(files[0]),
    )
    assert not predictor.model.training  # exporting leaves the model as it found it
    onnx_predictor = OnnxPredictor(out)
    counts = []
    for file in files:
        torch_pred, onnx_pred = predictor(file), onnx_predictor(file)
        counts.append(len(torch_pred))
        if len(torch_pred):
            _matched(torch_pred, onnx_pred)
        else:
            assert len(onnx_pred) == 0
    assert len(set(counts)) > 2, counts  # more and fewer than the traced image's


def test_box_templates_need_opset_16(tiny_checkpoint, tmp_path):
    ckpt, _ = tiny_checkpoint("fcos")
    with pytest.raises(ValueError, match="opset=15.*template_from=box.*opset=16"):
        main([f"ckpt_path={ckpt}", f"out={tmp_path / 'm.onnx'}", "opset=15"])


def test_a_fixed_size_export_pads_every_image_to_it(tiny_checkpoint, tmp_path):
    ckpt, data = tiny_checkpoint("fcos")
    out = main([f"ckpt_path={ckpt}", f"out={tmp_path / 'fixed.onnx'}", "dynamic=false"])
    onnx_predictor = OnnxPredictor(out)
    assert onnx_predictor.canvas == (128, 128)  # max_size square: every resized image fits
    file = sorted((data / "shapes" / "images" / "val").iterdir())[0]
    result = onnx_predictor(file)
    assert result.masks is not None and result.masks.shape[-2:] == result.image_size


def test_command_line_errors_name_the_option(tmp_path):
    with pytest.raises(SystemExit, match="key=value"):
        main(["model.ckpt"])
    with pytest.raises(SystemExit, match="ckpt_path"):
        main([f"out={tmp_path / 'm.onnx'}"])
    with pytest.raises(SystemExit, match="opset"):
        main(["ckpt_path=x", "opset=seventeen"])
    with pytest.raises(SystemExit, match="Key 'bogus'"):
        main(["ckpt_path=x", "bogus=1"])
    with pytest.raises(FileNotFoundError, match="x.ckpt"):
        main([f"ckpt_path={tmp_path / 'x.ckpt'}"])


def test_only_pointins_exports(tmp_path):
    with pytest.raises(TypeError, match="ONNX export covers PointINS"):
        export_onnx(torch.nn.Linear(1, 1), None, tmp_path / "m.onnx", ["a"])
