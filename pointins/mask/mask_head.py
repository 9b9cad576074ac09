"""Mask head H (§3.2.3, Eq. 7): Mask R-CNN's mask head on the K x K mask feature."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn


class MaskHead(nn.Module):
    """``num_convs`` x (conv3x3 + ReLU) -> ConvTranspose 2x2 s2 -> ReLU -> conv1x1 -> 1 logit.

    Input ``(N, in_channels, K, K)``, output class-agnostic logits ``(N, 1, sK, sK)`` with
    ``s = output_scale``: 2 is the paper's head (one 2x deconvolution); 4 adds a second
    ConvTranspose 2x2 s2 + ReLU stage, doubling the output side without changing the
    template's ``K``.
    The hidden convs are initialised as in torchvision's Mask R-CNN heads (kaiming normal,
    ``fan_out``, ReLU gain; zero biases); the predictor as detectron2's mask predictor,
    normal with std 0.001 and zero bias, so the first logits are near 0 (loss ≈ log 2 per
    pixel) whatever the scale of the dynamic-conv features feeding the head.

    Args:
        in_channels: channels of the mask feature (B for the dynamic conv fusions,
            E / 2E for add / concat).
        conv_dim: width of the head convs and the deconv (B, 256).
        num_convs: number of conv3x3 + ReLU blocks (4).
        output_scale: output side over ``K``: 2 (the paper's) or 4.
    """

    def __init__(
        self, in_channels: int = 256, conv_dim: int = 256, num_convs: int = 4, output_scale: int = 2
    ) -> None:
        super().__init__()
        if num_convs < 0:
            raise ValueError(f"MaskHead: num_convs must be >= 0, got {num_convs}")
        if output_scale not in (2, 4):
            raise ValueError(
                f"model.mask.output_scale must be 2 (the paper's 2K x 2K masks) or 4 (4K x 4K), "
                f"got {output_scale}"
            )
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for i in range(num_convs):
            layers[f"mask_fcn{i + 1}"] = nn.Conv2d(channels, conv_dim, 3, padding=1)
            layers[f"relu{i + 1}"] = nn.ReLU(inplace=True)
            channels = conv_dim
        layers["deconv"] = nn.ConvTranspose2d(channels, conv_dim, 2, stride=2)
        layers["deconv_relu"] = nn.ReLU(inplace=True)
        if output_scale == 4:
            layers["deconv2"] = nn.ConvTranspose2d(conv_dim, conv_dim, 2, stride=2)
            layers["deconv2_relu"] = nn.ReLU(inplace=True)
        layers["predictor"] = nn.Conv2d(conv_dim, 1, 1)
        self.layers = nn.Sequential(layers)
        for module in self.layers:
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.layers.predictor.weight, std=0.001)

    def forward(self, mask_features: Tensor) -> Tensor:
        """``(N, C, K, K)`` mask features -> ``(N, 1, sK, sK)`` mask logits."""
        return self.layers(mask_features)
