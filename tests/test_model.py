"""The assembled network: ``torch.compile`` (``model.compile=true``) changes neither the
outputs, the gradients nor the checkpoint keys."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from tiny import TINY_MODEL

from pointins.model import build_model


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


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
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
