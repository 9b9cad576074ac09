"""Detector losses against hand computations written out with explicit formulas."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pointins.detectors.assigners import gather_assigned, pad_targets
from pointins.detectors.box_coders import DeltaBoxCoder, LTRBBoxCoder
from pointins.detectors.losses import fcos_losses, num_positives_across_ranks, retinanet_losses
from pointins.structures import Assignment, DenseOutputs

ALPHA, GAMMA, BETA = 0.25, 2.0, 0.1


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _focal(x: float, t: float) -> float:
    p = _sigmoid(x)
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = ALPHA * t + (1 - ALPHA) * (1 - t)
    return alpha_t * ce * (1 - p_t) ** GAMMA


def _smooth_l1(d: float) -> float:
    return 0.5 * d * d / BETA if abs(d) < BETA else abs(d) - 0.5 * BETA


def _deltas(anchor: list[float], box: list[float]) -> list[float]:
    aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
    bw, bh = box[2] - box[0], box[3] - box[1]
    ax, ay = anchor[0] + aw / 2, anchor[1] + ah / 2
    bx, by = box[0] + bw / 2, box[1] + bh / 2
    return [(bx - ax) / aw, (by - ay) / ah, math.log(bw / aw), math.log(bh / ah)]


def _giou_loss(a: list[float], b: list[float]) -> float:
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return 1 - (inter / union - (hull - union) / hull)


def _bce_logits(x: float, t: float) -> float:
    p = _sigmoid(x)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


# two images, three anchors, two classes
TARGETS = [
    {"boxes": torch.tensor([[1.0, 1.0, 11.0, 12.0]]), "labels": torch.tensor([1])},
    {
        "boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0], [9.0, 1.0, 21.0, 9.0]]),
        "labels": torch.tensor([0, 0]),
    },
]
MATCHED = torch.tensor([[0, -1, -2], [-1, 1, -1]])  # positives: (0, 0) -> GT0, (1, 1) -> GT1
POSITIVES = [(0, 0, 0), (1, 1, 1)]  # (image, anchor, gt)


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cls = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64)
    reg = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64) * 0.3
    ctr = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    return cls, reg, ctr


def _assignment(matched: torch.Tensor = MATCHED):
    gt_boxes, gt_labels, _ = pad_targets(TARGETS)
    return gather_assigned(matched, gt_boxes.double(), gt_labels)


def _hand_focal(cls: torch.Tensor, matched: torch.Tensor) -> float:
    total = 0.0
    for i in range(2):
        for n in range(3):
            m = int(matched[i, n])
            if m == -2:
                continue
            label = int(TARGETS[i]["labels"][m]) if m >= 0 else -1
            total += sum(_focal(float(cls[i, n, c]), float(c == label)) for c in range(2))
    return total


def test_retinanet_losses_hand_computed() -> None:
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [0.0, 10.0, 10.0, 20.0]]
    )
    cls, reg, _ = _inputs()
    losses = retinanet_losses(
        cls, reg, anchors.double(), _assignment(), DeltaBoxCoder(), ALPHA, GAMMA, BETA
    )
    hand_box = 0.0
    for i, n, g in POSITIVES:
        target = _deltas(anchors[n].tolist(), TARGETS[i]["boxes"][g].tolist())
        hand_box += sum(_smooth_l1(float(reg[i, n, k]) - target[k]) for k in range(4))
    num_pos = 2
    assert math.isclose(
        float(losses["loss_cls"]), _hand_focal(cls, MATCHED) / num_pos, rel_tol=1e-9
    )
    assert math.isclose(float(losses["loss_box_reg"]), hand_box / num_pos, rel_tol=1e-9)


def test_retinanet_ignored_anchor_does_not_count() -> None:
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [0.0, 10.0, 10.0, 20.0]]
    )
    cls, reg, _ = _inputs()
    base = retinanet_losses(cls, reg, anchors.double(), _assignment(), DeltaBoxCoder())
    cls2 = cls.clone()
    cls2[0, 2] += 5.0  # the ignored anchor
    moved = retinanet_losses(cls2, reg, anchors.double(), _assignment(), DeltaBoxCoder())
    assert torch.equal(base["loss_cls"], moved["loss_cls"])


def test_fcos_losses_hand_computed() -> None:
    stride = 8.0
    cells = torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0], [0.0, 8.0, 8.0, 16.0]])
    cls, reg, ctr = _inputs(1)
    reg = reg.abs() + 0.2  # the head's ReLU * scale output is non-negative
    losses = fcos_losses(cls, reg, ctr, cells.double(), _assignment(), LTRBBoxCoder(), ALPHA, GAMMA)
    hand_giou, hand_ctr, ctr_sum = 0.0, 0.0, 0.0
    for i, n, g in POSITIVES:
        cx, cy = (cells[n, 0] + cells[n, 2]).item() / 2, (cells[n, 1] + cells[n, 3]).item() / 2
        dl, dt, dr, db = reg[i, n].tolist()
        pred = [cx - dl * stride, cy - dt * stride, cx + dr * stride, cy + db * stride]
        gt = TARGETS[i]["boxes"][g].tolist()
        gl, gt_, gr, gb = cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy
        target = math.sqrt(min(gl, gr) / max(gl, gr) * min(gt_, gb) / max(gt_, gb))
        hand_giou += target * _giou_loss(pred, gt)  # weighted by the centre-ness target
        ctr_sum += target
        hand_ctr += _bce_logits(float(ctr[i, n]), target)
    num_pos = 2
    assert math.isclose(
        float(losses["loss_cls"]), _hand_focal(cls, MATCHED) / num_pos, rel_tol=1e-9
    )
    assert 0 < ctr_sum < num_pos  # the two normalisers differ, so the test tells them apart
    assert math.isclose(float(losses["loss_box_reg"]), hand_giou / ctr_sum, rel_tol=1e-6)
    assert math.isclose(float(losses["loss_centerness"]), hand_ctr / num_pos, rel_tol=1e-9)


def test_zero_positives_give_finite_losses_with_gradients() -> None:
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [0.0, 10.0, 10.0, 20.0]]
    )
    no_pos = torch.tensor([[-1, -1, -2], [-1, -1, -1]])
    for name in ("retinanet", "fcos"):
        cls, reg, ctr = (t.clone().requires_grad_(True) for t in _inputs())
        if name == "retinanet":
            losses = retinanet_losses(
                cls, reg, anchors.double(), _assignment(no_pos), DeltaBoxCoder()
            )
        else:
            reg_pos = reg.abs()
            losses = fcos_losses(
                cls, reg_pos, ctr, anchors.double(), _assignment(no_pos), LTRBBoxCoder()
            )
        total = sum(losses.values())
        assert all(torch.isfinite(v) and v.requires_grad for v in losses.values())
        assert float(losses["loss_box_reg"].detach()) == 0.0
        # normaliser clamps to 1: the classification loss is the plain focal sum
        assert math.isclose(float(losses["loss_cls"].detach()), _hand_focal(cls.detach(), no_pos))
        total.backward()
        assert cls.grad is not None and cls.grad.abs().sum() > 0
        assert reg.grad is not None and torch.all(reg.grad == 0)
        if name == "fcos":
            assert ctr.grad is not None and torch.all(ctr.grad == 0)


def test_batch_without_any_gt() -> None:
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    gt_boxes, gt_labels, _ = pad_targets(targets)
    assignment = gather_assigned(torch.full((2, 3), -1), gt_boxes, gt_labels)
    cells = torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0], [0.0, 8.0, 8.0, 16.0]])
    cls, reg, ctr = (t.float().requires_grad_(True) for t in _inputs())
    losses = fcos_losses(cls, reg.abs(), ctr, cells, assignment, LTRBBoxCoder())
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


def test_num_positives_across_ranks(tmp_path) -> None:
    assert float(num_positives_across_ranks(torch.tensor(0))) == 1.0
    assert float(num_positives_across_ranks(torch.tensor(7))) == 7.0
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        count = torch.tensor(6)
        assert float(num_positives_across_ranks(count)) == 6.0
        assert int(count) == 6  # the input is not reduced in place
    finally:
        dist.destroy_process_group()


def test_atss_losses_from_its_config_hand_computed() -> None:
    """``conf/detector/atss.yaml``'s loss and box coder on one image, four 32 px anchors and
    two GTs: focal over all anchors, GIoU of the boxes decoded from deltas with weights
    (10, 10, 5, 5), weighted by the centre-ness targets and their sum, times 2, and the
    centre-ness BCE, both normalised by the positives."""
    conf = OmegaConf.load(Path(__file__).parents[1] / "conf" / "detector" / "atss.yaml")
    loss_fn, coder = instantiate(conf.loss), instantiate(conf.box_coder)
    anchors = torch.tensor(
        [[0.0, 0.0, 32.0, 32.0], [16.0, 0.0, 48.0, 32.0], [32, 16, 64, 48], [0, 32, 32, 64]],
        dtype=torch.float64,
    )  # centres (16, 16), (32, 16), (48, 32), (16, 48)
    gt = [[4.0, 2.0, 44.0, 30.0], [30.0, 10.0, 62.0, 58.0]]
    gt_labels = [2, 0]
    matched = [0, 0, 1, -1]  # anchor 3 is background
    gen = torch.Generator().manual_seed(7)
    cls = torch.randn(1, 4, 3, generator=gen, dtype=torch.float64)
    reg = torch.randn(1, 4, 4, generator=gen, dtype=torch.float64) * 0.5
    ctr = torch.randn(1, 4, generator=gen, dtype=torch.float64)
    outputs = DenseOutputs(
        cls_logits=[cls], box_regression=[reg], centerness=[ctr], poi_features=[torch.zeros(1)]
    )
    assignment = Assignment(
        matched_idxs=torch.tensor([matched]),
        gt_boxes=torch.tensor([[gt[max(m, 0)] for m in matched]], dtype=torch.float64),
        gt_labels=torch.tensor([[gt_labels[max(m, 0)] for m in matched]]),
    )
    losses = loss_fn(outputs, anchors, assignment, coder)

    focal, giou, bce, ctr_sum = 0.0, 0.0, 0.0, 0.0
    for n, m in enumerate(matched):
        label = gt_labels[m] if m >= 0 else -1
        focal += sum(_focal(float(cls[0, n, c]), float(c == label)) for c in range(3))
        if m < 0:
            continue
        x1, y1, x2, y2 = anchors[n].tolist()
        aw, ah, ax, ay = x2 - x1, y2 - y1, (x1 + x2) / 2, (y1 + y2) / 2
        dx, dy, dw, dh = reg[0, n].tolist()
        cx, cy = ax + dx / 10 * aw, ay + dy / 10 * ah
        w, h = math.exp(dw / 5) * aw, math.exp(dh / 5) * ah
        pred = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        g = gt[m]
        left, top, right, bottom = ax - g[0], ay - g[1], g[2] - ax, g[3] - ay
        target = math.sqrt(
            min(left, right) / max(left, right) * min(top, bottom) / max(top, bottom)
        )
        giou += target * _giou_loss(pred, g)
        ctr_sum += target
        bce += _bce_logits(float(ctr[0, n]), target)
    num_pos = 3
    assert 0 < ctr_sum < num_pos  # the two normalisers differ
    assert losses.keys() == {"loss_cls", "loss_box_reg", "loss_centerness"}
    assert math.isclose(float(losses["loss_cls"]), focal / num_pos, rel_tol=1e-9)
    # rel_tol 1e-6: torchvision's GIoU loss adds eps = 1e-7 to its denominators
    assert math.isclose(float(losses["loss_box_reg"]), 2.0 * giou / ctr_sum, rel_tol=1e-6)
    assert math.isclose(float(losses["loss_centerness"]), bce / num_pos, rel_tol=1e-9)
