"""Feature pyramid P3–P7 built on torchvision's FeaturePyramidNetwork."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


class FPN(nn.Module):
    """C3–C5 -> P3–P7 (strides 8..128), ``out_channels`` wide.

    P6 is a stride-2 3×3 conv on P5 (FCOS) or on C5 (RetinaNet, ``p6_from='c5'``), P7 a
    stride-2 conv on ReLU(P6); torchvision's ``LastLevelP6P7`` implements both.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        out_channels: int = 256,
        p6_from: str = "p5",
    ) -> None:
        super().__init__()
        if p6_from not in ("p5", "c5"):
            raise ValueError(f"model.neck.p6_from={p6_from!r}: choose p5 or c5")
        p6_in = out_channels if p6_from == "p5" else in_channels[-1]
        self.fpn = FeaturePyramidNetwork(
            list(in_channels), out_channels, extra_blocks=LastLevelP6P7(p6_in, out_channels)
        )
        if p6_from == "c5" and p6_in == out_channels:
            # torchvision decides P5 vs C5 by comparing widths; force C5.
            self.fpn.extra_blocks.use_P5 = False
        self.out_channels = out_channels
        self.strides = [*in_strides, in_strides[-1] * 2, in_strides[-1] * 4]

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """[C3, C4, C5] -> [P3, P4, P5, P6, P7], each (B, out_channels, H/s, W/s)."""
        named = OrderedDict((f"c{i}", f) for i, f in enumerate(features))
        return list(self.fpn(named).values())
