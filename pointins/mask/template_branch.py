"""Template branch F^n (§3.2.1): one instance-agnostic (E, K, K) template per query.

(:class:`BoxTemplateBranch`, beyond the paper, reads it from the query's box instead.)

The paper's "channel up-scaling" convolution is a ``k_t x k_t`` conv from the PoI
feature (``F`` = 256 channels) to ``E * K * K`` channels. Running it densely on every
FPN level would cost ``E * K^2 * F * k_t^2`` MACs per location (5.3 M at the
defaults) for locations that are never segmented, so it is evaluated only at the
queried points: the ``k_t x k_t x F`` patch around each point is gathered (zero
outside the map, exactly like the dense conv's zero padding) and multiplied by the
conv weight viewed as an ``(E*K*K, k_t*k_t*F)`` matrix, in one product for all
queries of all levels (the conv is shared over levels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from pointins.structures import InstanceQueries


def gather_patches(
    features: Sequence[Tensor], queries: InstanceQueries, kernel_size: int
) -> Tensor:
    """Gather the ``k x k`` feature patch centred on every query, in query order.

    Args:
        features: per FPN level ``(B, F, H_l, W_l)``; all levels share ``F``.
        queries: ``N`` queries; uses ``batch_idx``, ``level`` and ``yx`` (row, col).
        kernel_size: ``k`` (odd). ``k = 1`` gives the feature vector at the point.

    Returns:
        ``(N, k * k * F)`` with ``F`` fastest, then ``dx``, then ``dy``: row ``n``
        is ``features[level_n][batch_n, :, y_n - k//2 : y_n + k//2 + 1,
        x_n - k//2 : x_n + k//2 + 1]`` permuted to ``(k, k, F)``, where positions
        outside the map read zero (the dense conv's zero padding).

    Loops over the levels only. Every level gathers a patch for every query (index
    arithmetic on the flattened map: no padded copy of the map, no ``unfold``) and
    keeps it where the query is on that level, so nothing waits for the GPU to say
    how many queries a level has: ``L`` gathers of ``(N, k*k, F)``, tiny beside the
    mask head. ``level`` must lie in ``0 .. L-1`` (a query on no level reads zeros).
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if len(features) == 0:
        raise ValueError("gather_patches needs at least one feature level")
    channels = features[0].shape[1]
    kk = kernel_size * kernel_size
    pad = kernel_size // 2
    device = features[0].device
    # offsets of the k x k window relative to its centre, dy slowest: (kk,)
    window = torch.arange(kernel_size, device=device) - pad
    win_dy = window.repeat_interleave(kernel_size)  # (kk,)
    win_dx = window.repeat(kernel_size)  # (kk,)
    ys = queries.yx[:, 0, None] + win_dy  # (N, kk)
    xs = queries.yx[:, 1, None] + win_dx  # (N, kk)
    img = queries.batch_idx[:, None]  # (N, 1)

    patches = features[0].new_zeros(ys.shape[0], kk, channels)  # (N, kk, F)
    for level, feat in enumerate(features):
        _, feat_channels, height, width = feat.shape
        if feat_channels != channels:
            raise ValueError(
                f"all PoI feature levels must have the same channels; level 0 has "
                f"{channels}, level {level} has {feat_channels}"
            )
        inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)  # (N, kk)
        keep = inside & (queries.level == level)[:, None]  # (N, kk)
        flat_idx = ys.clamp(0, height - 1) * width + xs.clamp(0, width - 1)  # (N, kk)
        # advanced indices around a slice go first: (N, kk, F)
        patch = feat.flatten(2)[img, :, flat_idx]
        patches = torch.where(keep[..., None], patch, patches)  # zero padding, (N, kk, F)
    return patches.flatten(1)  # (N, kk*F)


def read_from_finer_level(
    features: Sequence[Tensor], queries: InstanceQueries, max_level: int
) -> InstanceQueries:
    """The queries moved to level ``min(level, max_level)``, at the location of that level
    under their own cell's centre: ``floor((y + 0.5) * 2^d)`` for a query ``d`` levels
    coarser (FPN strides double per level), clamped to the map. Only ``level`` and ``yx``
    change; the template of a coarse-level object then reads a finer map."""
    if max_level < 0:
        raise ValueError(f"model.mask.template_max_level must be >= 0 or null, got {max_level}")
    level = queries.level.clamp(max=max_level)  # (N,)
    shift = (queries.level - level).to(queries.yx.dtype)[:, None]  # (N, 1) levels finer
    yx = torch.div((2 * queries.yx + 1) << shift, 2, rounding_mode="floor")  # (N, 2)
    device = queries.yx.device
    sizes = torch.tensor([tuple(f.shape[-2:]) for f in features], device=device)  # (L, 2)
    yx = torch.minimum(yx, sizes[level] - 1)  # (N, 2) on the map
    return replace(queries, level=level, yx=yx)


def vector_to_template(vectors: Tensor, E: int, K: int) -> Tensor:
    """Reshape ``(N, E*K*K)`` vectors to ``(N, E, K, K)`` templates, E fastest.

    "The first nine dimensions of features before the reshape operation respond to
    the information of the upper-left-most location": element ``(i*K + j)*E + e`` of
    a vector is channel ``e`` at row ``i``, column ``j``.
    """
    num = vectors.shape[0]
    grid = vectors.reshape(num, K, K, E)  # (N, K, K, E), E fastest
    return grid.permute(0, 3, 1, 2)  # (N, E, K, K)


def template_conv(
    owner: str, in_channels: int, E: int, K: int, kernel_size: int, init_std: float, out: int
) -> nn.Conv2d:
    """The ``k_t x k_t`` template conv ``in_channels -> out`` of a template branch, its sizes
    checked (``owner`` names the branch in the error), initialised like the dense heads'
    convs: normal(std=``init_std``) weight, zero bias."""
    for name, value in (("in_channels", in_channels), ("E", E), ("K", K)):
        if value < 1:
            raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{owner}: kernel_size must be a positive odd integer, got {kernel_size}")
    conv = nn.Conv2d(in_channels, out, kernel_size, padding=kernel_size // 2)
    nn.init.normal_(conv.weight, std=init_std)
    nn.init.zeros_(conv.bias)
    return conv


class TemplateBranch(nn.Module):
    """F^n: ``k_t x k_t`` conv ``in_channels -> E*K*K`` evaluated at the queries only.

    The parameters are those of ``nn.Conv2d(in_channels, E*K*K, kernel_size,
    padding=kernel_size // 2)`` (``self.conv``; state-dict compatible with a dense
    conv), initialised like the dense heads' convs: normal(std=0.01) weight, zero bias.
    ``self.conv`` is never called on a whole map.

    Args:
        in_channels: ``F``, channels of the PoI features (256).
        E: template channels (9).
        K: template side (16).
        kernel_size: ``k_t`` (3), odd.
        init_std: std of the normal weight init.
        max_level: read the patch of a query on a coarser level from this level (index,
            0 = P3) instead (:func:`read_from_finer_level`); ``None`` reads every query's
            own level, as the paper does.
    """

    def __init__(
        self,
        in_channels: int = 256,
        E: int = 9,
        K: int = 16,
        kernel_size: int = 3,
        init_std: float = 0.01,
        max_level: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.E = E
        self.K = K
        self.kernel_size = kernel_size
        self.max_level = max_level
        self.conv = template_conv(
            "TemplateBranch", in_channels, E, K, kernel_size, init_std, E * K * K
        )

    def forward(self, poi_features: Sequence[Tensor], queries: InstanceQueries) -> Tensor:
        """Templates ``(N, E, K, K)`` for the queries, in query order.

        Args:
            poi_features: per FPN level ``(B, F, H_l, W_l)``.
            queries: the ``N`` points; their ``level``, ``batch_idx`` and ``yx`` are read.
        """
        k = self.kernel_size
        if self.max_level is not None:
            queries = read_from_finer_level(poi_features, queries, self.max_level)
        patches = gather_patches(poi_features, queries, k)  # (N, k*k*F), F fastest
        # conv weight (E*K*K, F, k, k) -> (E*K*K, k, k, F) -> (E*K*K, k*k*F) to match patches
        weight = self.conv.weight.permute(0, 2, 3, 1).reshape(self.E * self.K * self.K, -1)
        vectors = torch.nn.functional.linear(patches, weight, self.conv.bias)  # (N, E*K*K)
        return vector_to_template(vectors, self.E, self.K)  # (N, E, K, K)

    def extra_repr(self) -> str:
        return f"E={self.E}, K={self.K}, kernel_size={self.kernel_size}, max_level={self.max_level}"


class BoxTemplateBranch(nn.Module):
    """A template read from the query's box instead of its point (beyond the paper).

    The paper's ``k_t x k_t`` template conv, with ``E`` output channels instead of
    ``E * K * K``, runs densely on every level of the PoI features: an ``E``-channel
    template map. A query's template is that map on the query's own FPN level (the level
    its point lies on, not a level chosen by box size as Mask R-CNN's mapper does)
    RoI-aligned over its target box to ``K x K`` (``torchvision.ops.roi_align``,
    ``aligned=True``, ``sampling_ratio`` samples per bin and axis). Template cell
    ``(i, j)`` then holds the evidence under the box's cell ``(i, j)``, where
    :class:`TemplateBranch` must encode the whole shape in the patch around one point.
    The instance-aware weights, fusion and mask head are unchanged.

    Args:
        in_channels: ``F``, channels of the PoI features.
        E: template channels.
        K: template side.
        kernel_size: ``k_t``, odd.
        init_std: std of the conv's normal weight init (zero bias).
        sampling_ratio: bilinear samples per RoI bin and axis. One: at the paper's
            ``K = 16`` a bin of a box on its assigned level spans about a cell or less; at
            ``K = 8`` it can span two, read at its centre from a map the ``k_t x k_t`` conv
            has already smoothed over neighbouring cells.
    """

    def __init__(
        self,
        in_channels: int = 256,
        E: int = 9,
        K: int = 16,
        kernel_size: int = 3,
        init_std: float = 0.01,
        sampling_ratio: int = 1,
    ) -> None:
        super().__init__()
        self.E = E
        self.K = K
        self.kernel_size = kernel_size
        self.sampling_ratio = sampling_ratio
        self.conv = template_conv("BoxTemplateBranch", in_channels, E, K, kernel_size, init_std, E)

    def forward(self, poi_features: Sequence[Tensor], queries: InstanceQueries) -> Tensor:
        """Templates ``(N, E, K, K)`` for the queries, in query order.

        One RoI-align per level over that level's queries, as torchvision's
        ``MultiScaleRoIAlign`` and detectron2's ``ROIPooler`` do (finding them is one host
        sync per level on a GPU; aligning every query on every level instead avoids it but
        costs more bilinear work, which the CPU feels).
        """
        dtype = torch.promote_types(poi_features[0].dtype, torch.float32)  # boxes need fp32
        boxes = (queries.target_boxes / queries.stride[:, None]).to(dtype)  # (N, 4) in cells
        # boxes.shape[0], not len(queries): a traced size, so an export serves any count
        templates = boxes.new_zeros(boxes.shape[0], self.E, self.K, self.K)  # (N, E, K, K)
        for level, feat in enumerate(poi_features):
            template_map = self.conv(feat).to(dtype).contiguous()  # (B, E, H_l, W_l)
            idx = torch.nonzero(queries.level == level).squeeze(1)  # (N_l,)
            batch = queries.batch_idx[idx, None].to(dtype)  # (N_l, 1)
            rois = torch.cat([batch, boxes[idx]], dim=1)  # (N_l, 5)
            aligned = roi_align(
                template_map, rois, self.K, 1.0, self.sampling_ratio, aligned=True
            )  # (N_l, E, K, K)
            templates = templates.index_copy(0, idx, aligned)  # (N, E, K, K)
        return templates.to(poi_features[0].dtype)  # the features' dtype, as point templates

    def extra_repr(self) -> str:
        return f"E={self.E}, K={self.K}, sampling_ratio={self.sampling_ratio}"
