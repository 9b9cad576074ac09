"""The closed-form focal loss: torchvision's values and gradients, at the memory of its input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops

from benchmarks.bench import tensor_peak_mib
from pointins.detectors.focal_loss import sigmoid_focal_loss


def _inputs(dtype=torch.float64, batch: int = 2, anchors: int = 300, classes: int = 5):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, anchors, classes, generator=gen, dtype=torch.float64) * 4
    logits[0, :3] = torch.tensor([-60.0, 60.0, 0.0], dtype=torch.float64)[:, None]  # saturated
    labels = torch.randint(-2, classes, (batch, anchors), generator=gen)  # -2 ignored, -1 bg
    return logits.to(dtype).requires_grad_(), labels


def _torchvision(logits: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float):
    """The reference: torchvision's autograd focal loss on the non-ignored anchors."""
    valid = labels != -2  # (B, N)
    one_hot = F.one_hot(labels.clamp(min=0), logits.shape[-1]) * (labels >= 0)[..., None]
    return torchvision.ops.sigmoid_focal_loss(
        logits[valid], one_hot[valid].to(logits.dtype), alpha=alpha, gamma=gamma, reduction="sum"
    )


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 0.0), (0.75, 1.0), (0.25, 1.5)])
def test_matches_torchvision_values_and_gradients(alpha: float, gamma: float) -> None:
    logits, labels = _inputs()
    ours = sigmoid_focal_loss(logits, labels, alpha, gamma)
    (grad,) = torch.autograd.grad(3.0 * ours, logits)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = _torchvision(ref_logits, labels, alpha, gamma)
    (ref_grad,) = torch.autograd.grad(3.0 * ref, ref_logits)
    assert torch.allclose(ours, ref, rtol=1e-10)
    assert torch.allclose(grad, ref_grad, rtol=1e-8, atol=1e-12)
    assert torch.isfinite(grad).all()
    assert (grad[labels == -2] == 0).all()  # ignored anchors get no gradient


def test_half_precision_logits_compute_in_fp32() -> None:
    logits, labels = _inputs(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sigmoid_focal_loss(logits, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    ref_logits = logits.detach().float().requires_grad_()
    ref = _torchvision(ref_logits, labels, 0.25, 2.0)
    (ref_grad,) = torch.autograd.grad(ref, ref_logits)
    assert torch.allclose(loss, ref, rtol=1e-5)
    assert torch.allclose(grad.float(), ref_grad, rtol=1e-2, atol=1e-3)  # bf16 rounding


def test_saves_only_its_inputs_for_backward() -> None:
    """The point of the closed form: the graph holds the logits and the labels, where
    torchvision's autograd version holds several (B, N, C) tensors more."""

    def saved_bytes(loss_fn) -> int:
        logits, labels = _inputs(torch.float32, anchors=1000, classes=80)
        saved: list[torch.Tensor] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_fn(logits, labels, 0.25, 2.0)
        unique = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
        inputs = logits.numel() * logits.element_size() + labels.numel() * labels.element_size()
        return sum(unique.values()), inputs

    ours, input_bytes = saved_bytes(sigmoid_focal_loss)
    reference, _ = saved_bytes(_torchvision)
    assert ours == input_bytes  # (B, N, C) logits and (B, N) labels
    assert reference > 4 * input_bytes


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        (torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), r"\(B, N, C\)"),
        (torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long), r"\(B, N\) labels"),
    ],
)
def test_bad_shapes_name_what_is_expected(logits, labels, match) -> None:
    with pytest.raises(ValueError, match=match):
        sigmoid_focal_loss(logits, labels)


def test_working_memory_is_about_the_gradient_alone() -> None:
    """Forward and backward together need little more than the ``(B, N, C)`` gradient they
    return: the arithmetic runs image by image. torchvision's needs several times that."""
    logits, labels = _inputs(torch.float32, batch=4, anchors=10_000, classes=80)
    logits_mib = logits.numel() * 4 / (1 << 20)
    cpu = torch.device("cpu")

    def step(loss_fn):
        return lambda: torch.autograd.grad(loss_fn(logits, labels, 0.25, 2.0), logits)

    assert tensor_peak_mib(step(sigmoid_focal_loss), cpu) < 2.5 * logits_mib
    assert tensor_peak_mib(step(_torchvision), cpu) > 5.0 * logits_mib
