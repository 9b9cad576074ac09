"""The assembled network: ``torch.compile`` (``model.compile=true``) changes neither the
outputs, the gradients nor the checkpoint keys; the training loss is the weighted sum of
its parts' losses, and predictions come back in original-image pixels."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from tiny import TINY_MODEL
from torch import nn

from pointins.mask.losses import mask_loss
from pointins.model import PointINS, build_model
from pointins.structures import Detections


def _tiny(compose_cfg, detector: str):
    cfg = compose_cfg(
        [
            "experiment=shapes",
            f"detector={detector}",
            *TINY_MODEL,
            "model.detector.postprocess.score_thresh=0.0",
        ]
    )
    parts = OmegaConf.to_container(cfg.model, resolve=True)
    torch.manual_seed(0)
    return build_model(parts["backbone"], parts["neck"], parts["detector"], parts["mask"], 3)


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 96, 128, generator=g)
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]])
    masks = torch.zeros(2, 96, 128, dtype=torch.bool)
    masks[0, 12:70, 10:60] = masks[1, 20:90, 50:120] = True
    target = {"boxes": boxes, "labels": torch.tensor([0, 2]), "masks": masks}
    return images, [target, copy.deepcopy(target)]


@pytest.mark.slow  # a minute of graph capture; make test runs a compiled step in test_bench_gpu
@pytest.mark.parametrize("detector", ["fcos", "retinanet"])
def test_compiled_network_matches_eager(compose_cfg, detector):
    """Graph capture of backbone, FPN, head and mask head through AOTAutograd (the
    inductor backend's front end; the code generation itself is left to the GPU run)."""
    eager = _tiny(compose_cfg, detector)
    compiled = copy.deepcopy(eager)
    compiled.compile_network(backend="aot_eager")
    assert compiled.state_dict().keys() == eager.state_dict().keys()

    images, targets = _batch()
    sizes = [(96, 128), (90, 120)]
    eager.eval(), compiled.eval()
    ref, out = eager.detect(images, sizes), compiled.detect(images, sizes)
    for r, o in zip(ref, out, strict=True):
        torch.testing.assert_close(o.boxes, r.boxes)
        torch.testing.assert_close(o.masks, r.masks)

    eager.train(), compiled.train()
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731  same mask samples
    loss_ref = sum(eager.losses(images, targets, gen()).values())
    loss_out = sum(compiled.losses(images, targets, gen()).values())
    torch.testing.assert_close(loss_out, loss_ref)
    loss_ref.backward(), loss_out.backward()
    grads = zip(compiled.parameters(), eager.parameters(), strict=True)
    for p_out, p_ref in grads:
        if p_ref.grad is not None:
            torch.testing.assert_close(p_out.grad, p_ref.grad, rtol=1e-4, atol=1e-5)


def test_building_the_network_imports_no_lightning():
    """``pointins.model`` (the network and ``build_model``) is usable without Lightning:
    exporting or embedding a model does not pull in the training stack."""
    code = (
        "import sys, pointins.model, pointins.detectors, pointins.mask; "
        "print(sorted(m for m in sys.modules if 'lightning' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("detector", ["retinanet", "fcos", "atss"])
def test_losses_read_as_detector_sampler_mask(compose_cfg, detector):
    """Every detector feeds the mask module through the same seam: the detector's state,
    its anchor condition and the query sampler; the mask loss is part of the total."""
    model = _tiny(compose_cfg, detector)
    images, targets = _batch()
    losses = model.losses(images, targets, torch.Generator().manual_seed(1))
    assert "loss_mask" in losses and all(torch.isfinite(v) for v in losses.values())
    _, state = model.detector.forward_train(model.features(images), targets)
    anchor_gt = model.detector.mask_anchor_condition(state, model.sampler.anchor_iou)
    queries, mask_gt = model.sampler(state, anchor_gt, [t["masks"] for t in targets], 16)
    assert len(queries) > 0 and mask_gt.shape == (len(queries), 16, 16)
    assert not state.pred_boxes.requires_grad


def test_the_package_does_not_import_the_datamodules():
    """Layers point one way: ``datamodules`` builds on ``pointins`` (structures, drawing),
    never the reverse, so the network and its tools load without the data pipeline."""
    import ast
    from pathlib import Path

    offenders = []
    for path in (Path(__file__).parents[1] / "pointins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "datamodules"]
    assert offenders == []


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_losses_are_weighted_detector_plus_weighted_mask_loss(compose_cfg, detector):
    """``losses`` = λ_det x the detector's own terms + λ_mask x the mask loss (edge weight,
    Dice weight) of the queries the sampler draws with the same generator, the parts called
    one by one; every weight comes from the config and none is 1."""
    cfg = compose_cfg(
        [
            "experiment=shapes",
            f"detector={detector}",
            *TINY_MODEL,
            "model.det_weight=0.7",
            "model.mask.loss_weight=1.5",
            "model.mask.edge_weight=3.0",
            "model.mask.dice_weight=0.25",
        ]
    )
    parts = OmegaConf.to_container(cfg.model, resolve=True)
    with torch.random.fork_rng():  # fixed initial weights; the caller's RNG state untouched
        torch.manual_seed(0)
        net = [parts[k] for k in ("backbone", "neck", "detector", "mask")]
        model = build_model(*net, 3, parts["det_weight"])
    images, targets = _batch()
    losses = model.losses(images, targets, torch.Generator().manual_seed(3))

    det_losses, state = model.detector.forward_train(model.features(images), targets)
    anchor_gt = model.detector.mask_anchor_condition(state, model.sampler.anchor_iou)
    queries, mask_gt = model.sampler(
        state, anchor_gt, [t["masks"] for t in targets], 16, torch.Generator().manual_seed(3)
    )
    logits = model.mask(state.poi_features, queries)
    assert len(queries) > 0 and logits.shape == mask_gt.shape == (len(queries), 16, 16)
    expected = {k: 0.7 * v for k, v in det_losses.items()}
    expected["loss_mask"] = 1.5 * mask_loss(logits, mask_gt, edge_weight=3.0, dice_weight=0.25)
    assert losses.keys() == expected.keys() and len(det_losses) >= 2
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value, rtol=1e-5, atol=1e-6, msg=key)
    # the edge and Dice weights matter here: other values give another mask loss
    plain = 1.5 * mask_loss(logits, mask_gt, edge_weight=4.0, dice_weight=0.0)
    assert not torch.isclose(losses["loss_mask"], plain, rtol=1e-3)


def _pixels_in(h: int, w: int, x0: float, y0: float, x1: float, y1: float) -> torch.Tensor:
    """(h, w) bool: the pixels whose centres lie in [x0, x1] x [y0, y1]."""
    xs, ys = torch.arange(w) + 0.5, torch.arange(h)[:, None] + 0.5
    return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


def _detections(boxes, masks, scores, labels) -> Detections:
    n = len(scores)
    return Detections(
        boxes=torch.tensor(boxes),
        scores=torch.tensor(scores),
        labels=torch.tensor(labels),
        level=torch.zeros(n, dtype=torch.long),
        yx=torch.zeros(n, 2, dtype=torch.long),
        anchor_idx=torch.zeros(n, dtype=torch.long),
        anchors=torch.zeros(n, 4),
        masks=masks,
    )


def test_predict_maps_detections_back_to_the_original_image(monkeypatch):
    """Hand-built detections in the resized, padded input come back in original pixels:
    image A 50x75 resized x1.6 to 80x120, image B 45x71 resized to 80x126 (x16/9 down,
    x126/71 across), both padded to 96x128. Boxes scale by the inverse factors, each
    column by its own axis; a mask that is 1 on a sub-rectangle of its box lands on that
    sub-rectangle of the original image (1 px tolerance at its border), clipped to it."""
    # only predict runs: the network's parts are never called
    model = PointINS(nn.Identity(), nn.Identity(), nn.Identity(), mask_thresh=0.5).eval()
    image_sizes, orig_sizes = [(80, 120), (80, 126)], [(50, 75), (45, 71)]
    s = 16
    right_half = torch.zeros(s, s)
    right_half[:, 8:] = 1.0
    band = torch.zeros(s, s)
    band[4:12, 8:] = 1.0  # rows 4..11, right half
    detections = [
        _detections(
            [[16.0, 24.0, 96.0, 72.0], [100.0, 60.0, 130.0, 90.0]],  # the second leaves it
            torch.stack([band, torch.ones(s, s)]),
            [0.9, 0.4],
            [2, 0],
        ),
        _detections([[12.6, 8.0, 63.0, 48.0]], right_half[None], [0.7], [1]),
    ]
    seen = []

    def detect(images, sizes):
        seen.append((tuple(images.shape), list(sizes)))
        return detections

    monkeypatch.setattr(model, "detect", detect)
    images = torch.zeros(2, 3, 96, 128)
    out = model.predict(images, image_sizes, orig_sizes)
    assert seen == [((2, 3, 96, 128), image_sizes)]

    # A: x and y by 75/120 = 50/80 = 1/1.6; B: x by 71/126, y by 45/80
    expected_boxes = [
        [[10.0, 15.0, 60.0, 45.0], [62.5, 37.5, 81.25, 56.25]],
        [[7.1, 4.5, 35.5, 27.0]],
    ]
    # the masks' foreground in original pixels: band rows 4..11 of 16 and right half of
    # box A0 (x 35..60, y 22.5..37.5); all of box A1, clipped to the image; right half
    # of box B0 (x 21.3..35.5, y 4.5..27)
    expected_regions = [
        [(35.0, 22.5, 60.0, 37.5), (62.5, 37.5, 81.25, 56.25)],
        [(21.3, 4.5, 35.5, 27.0)],
    ]
    for result, boxes, regions, (h0, w0), det in zip(
        out, expected_boxes, expected_regions, orig_sizes, detections, strict=True
    ):
        torch.testing.assert_close(result["boxes"], torch.tensor(boxes), rtol=0, atol=1e-4)
        assert torch.equal(result["scores"], det.scores)
        assert torch.equal(result["labels"], det.labels)
        masks = result["masks"]
        assert masks.dtype == torch.bool and masks.shape == (len(boxes), h0, w0)
        for mask, (x0, y0, x1, y1) in zip(masks, regions, strict=True):
            inner = _pixels_in(h0, w0, x0 + 1, y0 + 1, x1 - 1, y1 - 1)
            outer = _pixels_in(h0, w0, x0 - 1, y0 - 1, x1 + 1, y1 + 1)
            assert inner.sum() > 20
            assert bool((mask | ~inner).all()), "foreground missing inside the region"
            assert not bool((mask & ~outer).any()), "foreground outside the region"
        assert not masks[:, 2, 2].any()  # a pixel far from every region
