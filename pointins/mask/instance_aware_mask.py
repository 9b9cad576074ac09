"""The instance-aware mask module (§3.2): template, weights, fusion, mask head.

``InstanceAwareMask`` turns the PoI features of the regression tower and a batch of
:class:`~pointins.structures.InstanceQueries` into one ``2K x 2K`` class-agnostic mask
logit map per query. Training (sampled queries) and inference (post-NMS queries) use
the same forward; the module never knows which detector made the queries, except
through ``anchor_shape`` (whether anchors have a shape to put in Iz).

Its constructor arguments map one to one onto the Hydra group ``mask/pointins.yaml``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from pointins.mask.dynamic_conv import FUSIONS, build_fusion
from pointins.mask.mask_head import MaskHead
from pointins.mask.template_branch import BoxTemplateBranch, TemplateBranch
from pointins.mask.weight_branch import (
    GENERATOR_STRUCTURES,
    IZ_PARTS,
    WeightBranch,
    check_iz_design,
    parse_iz_parts,
)
from pointins.structures import InstanceQueries


class InstanceAwareMask(nn.Module):
    """F^n (template) ⊛ F^w (weights) -> mask head, evaluated at the queries only.

    Args:
        in_channels: ``F``, channels of the PoI features (256).
        K: template side; masks are ``2K x 2K`` (16).
        E: template channels (9); T2/T3 vary it.
        kernel_size: ``k_t`` of the template conv (3; T3 uses ``E = k_t**2``).
        mask_dim: ``B``, output channels of the dynamic conv and width of the mask head (256).
        fusion: T7, one of ``conv1x1`` (D = 1, default), ``conv3x3`` (D = 9), ``add``,
            ``concat``.
        iz_parts: T4, subset of ``io``, ``offset``, ``boundary`` (list, or names joined
            by ``+``); the empty list takes Iz from the PoI feature.
        iz_design: T5, one of ``default``, ``feature``, ``fpn_offset``, ``log_io``,
            ``sigmoid``, ``tanh``.
        generator: T6, one of ``fc_relu`` (default), ``fc``, ``2fc_relu``, ``fc_relu_fc``.
        generator_hidden_dim: hidden width of the two-layer generators (None: their
            output width).
        anchor_shape: True for anchor-based detectors (RetinaNet, U = 10), False for
            FCOS (Io = [1/s], U = 7).
        head_convs: conv3x3 blocks in the mask head (4).
        template_init_std: std of the template conv's normal init (0.01).
        output_scale: mask side over ``K``: 2 (the paper's ``2K x 2K``) or 4 (one more 2x
            deconvolution in the mask head: finer masks from the same template).
        template_max_level: the template of a query on a coarser FPN level is read from
            this level (0 = P3) under the query's cell; ``None`` (the paper): its own level.
        template_from: ``point`` (the paper: :class:`TemplateBranch`, from the PoI patch
            at the query's point) or ``box`` (:class:`BoxTemplateBranch`, RoI-aligned from
            the query's box on its own level).
    """

    def __init__(
        self,
        in_channels: int = 256,
        K: int = 16,
        E: int = 9,
        kernel_size: int = 3,
        mask_dim: int = 256,
        fusion: str = "conv1x1",
        iz_parts: str | Iterable[str] = IZ_PARTS,
        iz_design: str = "default",
        generator: str = "fc_relu",
        generator_hidden_dim: int | None = None,
        anchor_shape: bool = True,
        head_convs: int = 4,
        template_init_std: float = 0.01,
        output_scale: int = 2,
        template_max_level: int | None = None,
        template_from: str = "point",
    ) -> None:
        super().__init__()
        # validate the string choices up front so a bad config fails with one clear message
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        if generator not in GENERATOR_STRUCTURES:
            raise ValueError(
                f"unknown generator {generator!r}; choose one of {', '.join(GENERATOR_STRUCTURES)}"
            )
        check_iz_design(iz_design)
        parts = parse_iz_parts(iz_parts)
        if mask_dim < 1:
            raise ValueError(f"mask_dim must be >= 1, got {mask_dim}")

        self.K = K
        self.E = E
        if template_from == "point":
            self.template_branch = TemplateBranch(
                in_channels, E, K, kernel_size, template_init_std, template_max_level
            )
        elif template_from == "box" and template_max_level is None:
            self.template_branch = BoxTemplateBranch(
                in_channels, E, K, kernel_size, template_init_std
            )
        elif template_from == "box":
            raise ValueError(
                "model.mask.template_max_level applies to templates read at the point; "
                "with model.mask.template_from=box set it to null"
            )
        else:
            raise ValueError(
                f"unknown model.mask.template_from {template_from!r}; choose point or box"
            )
        self.fusion = build_fusion(fusion, E, K, mask_dim)
        self.weight_branch = WeightBranch(
            out_dim=self.fusion.weight_dim,
            in_channels=in_channels,
            parts=parts,
            design=iz_design,
            anchor_shape=anchor_shape,
            structure=generator,
            hidden_dim=generator_hidden_dim,
        )
        self.head = MaskHead(
            self.fusion.out_channels, mask_dim, num_convs=head_convs, output_scale=output_scale
        )
        self.output_scale = output_scale

    @property
    def mask_size(self) -> int:
        """Side of the predicted masks, ``output_scale * K`` (the paper's ``2K``)."""
        return self.output_scale * self.K

    def forward(self, poi_features: Sequence[Tensor], queries: InstanceQueries) -> Tensor:
        """Mask logits ``(N, S, S)``, ``S = mask_size``, for the ``N`` queries, in query order.

        Args:
            poi_features: per FPN level ``(B, F, H_l, W_l)``, last map of the regression tower.
            queries: one row per instance to segment; ``N`` may be 0.
        """
        templates = self.template_branch(poi_features, queries)  # (N, E, K, K)
        weights = self.weight_branch(queries, poi_features)  # (N, weight_dim)
        features = self.fusion(templates, weights)  # (N, C, K, K)
        # A batch without samples (no positives yet) calls the head's forward directly,
        # around `model.compile`: an empty shape is not worth a graph of its own, and
        # inductor's compiled backward fails on it for a channels-last head on CPU
        # (torch 2.14: convolution_backward's weight-gradient strides disagree with its
        # meta kernel). The head still runs, so every parameter gets its zero gradient.
        head = self.head if features.shape[0] > 0 else self.head.forward
        logits = head(features)  # (N, 1, S, S), autocast dtype under autocast
        return logits.squeeze(1).float()  # (N, S, S), fp32 for the loss and the paste
