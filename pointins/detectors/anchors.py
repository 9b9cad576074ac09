"""Anchor generators: where the dense detectors place their anchors.

Both generators follow the package conventions (see ``pointins/structures.py``):
boxes are ``(x1, y1, x2, y2)`` in input-image pixels, a level's locations are
flattened row-major and anchors are the fastest axis,
``flat_index = (y * W + x) * A + a``. The location ``(y, x)`` of a level with
stride ``s`` is centred on ``((x + 0.5) * s, (y + 0.5) * s)``.

* :class:`AnchorGenerator` — RetinaNet, ``A = scales_per_octave * len(aspect_ratios)``.
* :class:`PointGenerator` — FCOS, ``A = 1``; the "anchor" of a location is the
  ``stride x stride`` cell centred on it, so its centre is the location and its
  width is the stride (what the FCOS box coder and assigner read back).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pointins.sync_free import to_device

FeatureSizes = Sequence[tuple[int, int]]

_CACHE_SIZE = 8


class _GridAnchorGenerator:
    """Shared machinery: cell anchors per level, shifted over the level's grid, cached.

    Subclasses implement :meth:`cell_anchors`, the ``(A, 4)`` anchors of one
    location centred on the origin.
    """

    def __init__(self, strides: Sequence[float]) -> None:
        if len(strides) == 0:
            raise ValueError("anchors.py: `strides` is empty; give one stride per FPN level.")
        self.strides: tuple[float, ...] = tuple(float(s) for s in strides)
        self._cache: dict[tuple, object] = {}

    # -- to implement ---------------------------------------------------------------
    def cell_anchors(self, level: int) -> Tensor:
        """Return the ``(A, 4)`` float32 anchors of one location of ``level``, centred on (0, 0)."""
        raise NotImplementedError

    @property
    def num_anchors(self) -> int:
        """Anchors per location, ``A``."""
        return self.cell_anchors(0).shape[0]

    # -- public API -----------------------------------------------------------------
    def __call__(
        self,
        feature_sizes: FeatureSizes,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> list[Tensor]:
        """Anchors of every level, ``[(H_l * W_l * A, 4), ...]``, in input-image pixels.

        Results are cached by ``(feature_sizes, device, dtype)``: repeated calls
        return the same tensors, which callers must not modify in place.
        """
        if torch.jit.is_tracing():  # ONNX export: sizes are traced values, not cache keys
            return [
                self._grid_anchors(level, h, w, torch.device(device)).to(dtype)
                for level, (h, w) in enumerate(feature_sizes)
            ]
        sizes = self._check_sizes(feature_sizes)
        key = ("anchors", sizes, torch.device(device), dtype)
        cached = self._cache_get(key)
        if cached is None:
            cached = [
                self._grid_anchors(level, h, w, torch.device(device)).to(dtype)
                for level, (h, w) in enumerate(sizes)
            ]
            self._cache_put(key, cached)
        return list(cached)

    def level_ids(self, feature_sizes: FeatureSizes, device: torch.device | str = "cpu") -> Tensor:
        """``(N,)`` long level index (0 = first stride) of every concatenated anchor."""
        sizes = self._check_sizes(feature_sizes)
        key = ("level_ids", sizes, torch.device(device))
        cached = self._cache_get(key)
        if cached is None:
            counts = torch.tensor([h * w * self.num_anchors for h, w in sizes])  # (L,)
            cached = to_device(torch.repeat_interleave(torch.arange(len(sizes)), counts), device)
            self._cache_put(key, cached)
        return cached

    # -- helpers --------------------------------------------------------------------
    def _check_sizes(self, feature_sizes: FeatureSizes) -> tuple[tuple[int, int], ...]:
        sizes = tuple((int(h), int(w)) for h, w in feature_sizes)
        if len(sizes) != len(self.strides):
            raise ValueError(
                f"anchors.py: got {len(sizes)} feature maps but {len(self.strides)} strides "
                f"{self.strides}; make the detector's `strides` match the FPN levels."
            )
        return sizes

    def _grid_anchors(self, level: int, height: int, width: int, device: torch.device) -> Tensor:
        stride = self.strides[level]
        cell = self.cell_anchors(level).to(device)  # (A, 4)
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride  # (H,)
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride  # (W,)
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
        shifts = torch.stack([cx, cy, cx, cy], dim=-1)  # (H, W, 4)
        anchors = shifts[:, :, None, :] + cell[None, None, :, :]  # (H, W, A, 4)
        return anchors.reshape(-1, 4)  # (H * W * A, 4), anchors fastest

    def _cache_get(self, key: tuple):
        return self._cache.get(key)

    def _cache_put(self, key: tuple, value) -> None:
        if len(self._cache) >= _CACHE_SIZE:  # drop the oldest entry (insertion order)
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(strides={self.strides}, num_anchors={self.num_anchors})"


class AnchorGenerator(_GridAnchorGenerator):
    """RetinaNet (and ATSS) anchors.

    At a level of stride ``s`` the anchor sizes are
    ``octave_base_scale * s * 2 ** (i / scales_per_octave)``, ``i = 0..scales_per_octave-1``,
    and for every aspect ratio ``r = h / w`` the area is preserved:
    ``w = size / sqrt(r)``, ``h = size * sqrt(r)``. Order within a location:
    scale-major, ratio-minor, ``a = scale_i * len(aspect_ratios) + ratio_i``.
    """

    #: the anchors have a shape: the mask module's Iz reads their size and aspect ratio
    anchor_shape = True

    def __init__(
        self,
        strides: Sequence[float] = (8, 16, 32, 64, 128),
        octave_base_scale: float = 4.0,
        scales_per_octave: int = 3,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    ) -> None:
        super().__init__(strides)
        self.octave_base_scale = float(octave_base_scale)
        self.scales_per_octave = int(scales_per_octave)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self._cells = [self._make_cell(s) for s in self.strides]

    def _make_cell(self, stride: float) -> Tensor:
        scales = torch.tensor(
            [2.0 ** (i / self.scales_per_octave) for i in range(self.scales_per_octave)],
            dtype=torch.float64,
        )
        sizes = self.octave_base_scale * stride * scales  # (S,)
        ratios = torch.tensor(self.aspect_ratios, dtype=torch.float64)  # (R,)
        ws = sizes[:, None] / ratios.sqrt()[None, :]  # (S, R)
        hs = sizes[:, None] * ratios.sqrt()[None, :]  # (S, R)
        cell = torch.stack([-ws, -hs, ws, hs], dim=-1) / 2  # (S, R, 4)
        return cell.reshape(-1, 4).float()  # (S * R, 4), scale-major

    def cell_anchors(self, level: int) -> Tensor:
        """``(A, 4)`` anchors of one location, centred on (0, 0), scale-major."""
        return self._cells[level]

    @property
    def num_anchors(self) -> int:
        """``scales_per_octave * len(aspect_ratios)``."""
        return self.scales_per_octave * len(self.aspect_ratios)


class PointGenerator(_GridAnchorGenerator):
    """FCOS locations, ``A = 1``: each "anchor" is the ``s x s`` cell centred on its location."""

    #: bare locations: the mask module's Iz uses the stride only
    anchor_shape = False

    def cell_anchors(self, level: int) -> Tensor:
        """``(1, 4)`` the ``stride x stride`` cell centred on (0, 0)."""
        half = self.strides[level] / 2
        return torch.tensor([[-half, -half, half, half]], dtype=torch.float32)  # (1, 4)

    @property
    def num_anchors(self) -> int:
        """Always 1."""
        return 1
