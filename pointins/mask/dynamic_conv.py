"""Instance-aware convolution F^m = F^n ⊛ F^w (§3.2.3) and the T7 fusions.

Every fusion is a small parameter-free module with the same interface::

    forward(templates (N, E, K, K), weights (N, weight_dim)) -> (N, out_channels, K, K)

``weight_dim`` is what the weight generator must output and ``out_channels`` what
the mask head takes. All samples are processed in one call (no loop over samples),
and ``N = 0`` returns an empty tensor that is still part of the autograd graph.

* ``conv1x1`` (default, D = 1): F^w viewed as ``(N, B, E)`` (the paper's ``(B, E, √D, √D)``)
  and applied as one batched matrix product ``(N, B, E) @ (N, E, K*K)``.
* ``conv3x3`` (D = 9): F^w viewed as ``(N*B, E, 3, 3)`` and applied as one grouped
  conv (``groups = N``, zero padding 1), as AdelaiDet CondInst runs its dynamic convs.
* ``add`` / ``concat``: F^w viewed as a template ``(E, K, K)`` (the same E-fastest
  reshape as F^n) and added to / concatenated with it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pointins.mask.template_branch import vector_to_template

FUSIONS: tuple[str, ...] = ("conv1x1", "conv3x3", "add", "concat")


def _check_templates(templates: Tensor, E: int, K: int) -> None:
    if templates.dim() != 4 or tuple(templates.shape[1:]) != (E, K, K):
        raise ValueError(
            f"expected templates of shape (N, {E}, {K}, {K}), got {tuple(templates.shape)}"
        )


class DynamicConvFusion(nn.Module):
    """Per-sample conv with kernel ``kernel_size`` (``√D``), E -> B channels, stride 1.

    Args:
        E: template (input) channels.
        K: template side.
        B: output channels, the mask feature dimension.
        kernel_size: ``√D``, odd; 1 uses a batched matrix product, larger a grouped conv.
    """

    def __init__(self, E: int, K: int, B: int, kernel_size: int = 1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"dynamic conv kernel_size must be a positive odd integer, got {kernel_size}"
            )
        self.E, self.K, self.B, self.kernel_size = E, K, B, kernel_size
        self.weight_dim = E * B * kernel_size * kernel_size  # E*B*D
        self.out_channels = B

    def forward(self, templates: Tensor, weights: Tensor) -> Tensor:
        _check_templates(templates, self.E, self.K)
        num = templates.shape[0]
        E, K, B, k = self.E, self.K, self.B, self.kernel_size
        if k == 1:
            kernels = weights.reshape(num, B, E)  # (N, B, E) = (N, B, E, 1, 1) squeezed
            flat = templates.reshape(num, E, K * K)  # (N, E, K*K)
            out = torch.bmm(kernels, flat)  # (N, B, E) @ (N, E, K*K) -> (N, B, K*K)
            return out.reshape(num, B, K, K)  # (N, B, K, K)
        if num == 0:
            # conv2d refuses groups=0; keep both inputs in the graph
            anchor = 0 * (templates.sum() + weights.sum())  # scalar, 0
            return templates.new_zeros(0, B, K, K) + anchor  # (0, B, K, K)
        kernels = weights.reshape(num * B, E, k, k)  # (N*B, E, k, k), sample-major
        grouped = templates.reshape(1, num * E, K, K)  # (1, N*E, K, K)
        out = torch.nn.functional.conv2d(grouped, kernels, padding=k // 2, groups=num)
        return out.reshape(num, B, K, K)  # (1, N*B, K, K) -> (N, B, K, K)

    def extra_repr(self) -> str:
        return f"E={self.E}, K={self.K}, B={self.B}, kernel_size={self.kernel_size}"


class AddFusion(nn.Module):
    """F^m = F^n + reshape(F^w) with F^w viewed as an ``(E, K, K)`` template."""

    def __init__(self, E: int, K: int) -> None:
        super().__init__()
        self.E, self.K = E, K
        self.weight_dim = E * K * K
        self.out_channels = E

    def forward(self, templates: Tensor, weights: Tensor) -> Tensor:
        _check_templates(templates, self.E, self.K)
        return templates + vector_to_template(weights, self.E, self.K)  # (N, E, K, K)


class ConcatFusion(nn.Module):
    """F^m = [F^n, reshape(F^w)] along channels, F^w viewed as an ``(E, K, K)`` template."""

    def __init__(self, E: int, K: int) -> None:
        super().__init__()
        self.E, self.K = E, K
        self.weight_dim = E * K * K
        self.out_channels = 2 * E

    def forward(self, templates: Tensor, weights: Tensor) -> Tensor:
        _check_templates(templates, self.E, self.K)
        extra = vector_to_template(weights, self.E, self.K)  # (N, E, K, K)
        return torch.cat([templates, extra], dim=1)  # (N, 2E, K, K)


def build_fusion(name: str, E: int, K: int, B: int) -> nn.Module:
    """The T7 fusion called ``name`` (one of :data:`FUSIONS`)."""
    if name == "conv1x1":
        return DynamicConvFusion(E, K, B, kernel_size=1)
    if name == "conv3x3":
        return DynamicConvFusion(E, K, B, kernel_size=3)
    if name == "add":
        return AddFusion(E, K)
    if name == "concat":
        return ConcatFusion(E, K)
    raise ValueError(f"unknown fusion {name!r}; choose one of {', '.join(FUSIONS)}")
