"""Weight branch F^w (§3.2.2): instance-aware dynamic-conv weights from Iz.

``Iz = [Io, Iq]`` describes the query geometrically (paper §3.2, Eq. 3–5)::

    Io = [1/s, u_o/v_o, u_o/s, v_o/s]            anchor stride, aspect (h/w), height/s, width/s
    Iq = [r_x, r_y, p_l, p_r, p_t, p_b]
    r_x = (x_q - x_o)/s,   r_y = (y_q - y_o)/s
    p_l = 0.5 v_q/s - r_x, p_r = 0.5 v_q/s + r_x, p_t = 0.5 u_q/s - r_y, p_b = 0.5 u_q/s + r_y

(x, y centres; u heights; v widths; o anchor; q target box; s stride). Without an
anchor shape (FCOS) ``Io = [1/s]`` and ``(x_o, y_o)`` is the location, i.e. the
centre of ``queries.anchors`` (the stride x stride cell), so ``U = 7``.

Ablations (the paper's T4–T6):

* T4 ``parts``: any subset of ``io`` (Io), ``offset`` (r_x, r_y) and ``boundary``
  (p_l, p_r, p_t, p_b); columns always come in that canonical order. The empty set
  means Iz is the PoI feature vector at the query (``F`` columns).
* T5 ``design``: ``default``; ``feature`` (= the empty set, whatever ``parts`` says);
  ``fpn_offset`` (the ``offset`` part becomes ``dx = (x_q-x_o)/v_o, dy = (y_q-y_o)/u_o``
  and the ``boundary`` part ``log(v_q/v_o), log(u_q/u_o)``: FPN / Faster R-CNN box
  regression targets with unit weights; for FCOS the "anchor" is the cell box);
  ``log_io`` (the Io columns are replaced by their logarithms); ``sigmoid`` /
  ``tanh`` (applied element-wise to the whole Iz, feature Iz included).

Box geometry never receives gradients through Iz: anchors and target boxes are
detached (the regressed target box must not be trained by the mask loss, paper §3.3).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from pointins.mask.template_branch import gather_patches
from pointins.structures import InstanceQueries

IZ_PARTS: tuple[str, ...] = ("io", "offset", "boundary")
IZ_DESIGNS: tuple[str, ...] = ("default", "feature", "fpn_offset", "log_io", "sigmoid", "tanh")
GENERATOR_STRUCTURES: tuple[str, ...] = ("fc_relu", "fc", "2fc_relu", "fc_relu_fc")

# smallest box side used in divisions and logarithms (pixels); degenerate regressed
# boxes (e.g. clipped to the image border) would otherwise give inf
_MIN_SIZE = 1e-3


def parse_iz_parts(parts: str | Iterable[str]) -> tuple[str, ...]:
    """Normalise ``parts`` to a tuple in canonical order (io, offset, boundary).

    Accepts a sequence of names (a Hydra ``ListConfig`` included) or one string with
    names joined by ``+`` (``"io+boundary"``); ``""``/``"none"``/``[]`` is the empty set.
    """
    if isinstance(parts, str):
        names = [] if parts.strip() in ("", "none") else parts.split("+")
    else:
        names = list(parts)
    names = [str(name).strip() for name in names]
    unknown = [name for name in names if name not in IZ_PARTS]
    if unknown:
        raise ValueError(
            f"unknown Iz part(s) {unknown} in iz_parts={names}; choose a subset of "
            f"{', '.join(IZ_PARTS)} (the empty list means Iz from the PoI feature)"
        )
    return tuple(name for name in IZ_PARTS if name in names)


def check_iz_design(design: str) -> str:
    """Return ``design`` if it is a known T5 design, else raise naming the choices."""
    if design not in IZ_DESIGNS:
        raise ValueError(f"unknown iz_design {design!r}; choose one of {', '.join(IZ_DESIGNS)}")
    return design


def iz_from_feature(parts: str | Iterable[str], design: str) -> bool:
    """Whether Iz is the PoI feature vector (T4 empty set, or T5 ``feature``)."""
    return check_iz_design(design) == "feature" or not parse_iz_parts(parts)


def iz_dim(
    parts: str | Iterable[str] = IZ_PARTS,
    design: str = "default",
    anchor_shape: bool = True,
    in_channels: int = 256,
) -> int:
    """``U``, the length of Iz for a configuration (10 RetinaNet, 7 FCOS by default).

    ``in_channels`` is only used when Iz comes from the PoI feature.
    """
    parts = parse_iz_parts(parts)
    if iz_from_feature(parts, design):
        return in_channels
    fpn = design == "fpn_offset"
    sizes = {"io": 4 if anchor_shape else 1, "offset": 2, "boundary": 2 if fpn else 4}
    return sum(sizes[name] for name in parts)


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x, y, u, v)`` = centre x, centre y, height, width of ``(N, 4)`` xyxy boxes."""
    x1, y1, x2, y2 = boxes.unbind(-1)  # each (N,)
    height = (y2 - y1).clamp(min=_MIN_SIZE)
    width = (x2 - x1).clamp(min=_MIN_SIZE)
    return 0.5 * (x1 + x2), 0.5 * (y1 + y2), height, width


def build_iz(
    queries: InstanceQueries,
    parts: str | Iterable[str] = IZ_PARTS,
    design: str = "default",
    anchor_shape: bool = True,
    poi_features: Sequence[Tensor] | None = None,
) -> Tensor:
    """Iz for every query, ``(N, U)`` with ``U = iz_dim(parts, design, anchor_shape, F)``.

    Args:
        queries: uses ``stride``, ``anchors`` and ``target_boxes`` (and ``batch_idx``,
            ``level``, ``yx`` for feature Iz).
        parts: T4 subset of ``io``, ``offset``, ``boundary``; empty = feature Iz.
        design: T5 design, see the module docstring.
        anchor_shape: ``True`` for anchor-based detectors (Io has 4 terms), ``False``
            for FCOS (Io = [1/s]).
        poi_features: per level ``(B, F, H_l, W_l)``; required for feature Iz only.
    """
    parts = parse_iz_parts(parts)
    if iz_from_feature(parts, design):
        if poi_features is None:
            raise ValueError(
                f"Iz from the PoI feature (iz_parts={list(parts)}, iz_design={design!r}) "
                "needs poi_features"
            )
        iz = gather_patches(poi_features, queries, 1)  # (N, F)
    else:
        stride = queries.stride.detach().to(queries.anchors.dtype)  # (N,)
        x_o, y_o, u_o, v_o = _centre_size(queries.anchors.detach())  # each (N,)
        x_q, y_q, u_q, v_q = _centre_size(queries.target_boxes.detach())  # each (N,)
        columns: list[Tensor] = []  # each (N,)
        if "io" in parts:
            io = [1.0 / stride]
            if anchor_shape:
                io += [u_o / v_o, u_o / stride, v_o / stride]
            if design == "log_io":
                io = [torch.log(term) for term in io]
            columns += io
        if design == "fpn_offset":
            if "offset" in parts:
                columns += [(x_q - x_o) / v_o, (y_q - y_o) / u_o]
            if "boundary" in parts:
                columns += [torch.log(v_q / v_o), torch.log(u_q / u_o)]
        else:
            r_x = (x_q - x_o) / stride
            r_y = (y_q - y_o) / stride
            if "offset" in parts:
                columns += [r_x, r_y]
            if "boundary" in parts:
                half_w = 0.5 * v_q / stride
                half_h = 0.5 * u_q / stride
                columns += [half_w - r_x, half_w + r_x, half_h - r_y, half_h + r_y]
        iz = torch.stack(columns, dim=1)  # (N, U)
    if design == "sigmoid":
        iz = torch.sigmoid(iz)
    elif design == "tanh":
        iz = torch.tanh(iz)
    return iz


class WeightGenerator(nn.Sequential):
    """T6 weight generator: maps Iz ``(N, U)`` to dynamic weights ``(N, out_dim)``.

    Structures: ``fc_relu`` (default, paper Eq. 2: ``ReLU(FC(Iz))``), ``fc``,
    ``2fc_relu`` (FC+ReLU+FC+ReLU), ``fc_relu_fc`` (FC+ReLU+FC). Two-layer structures
    use a hidden width of ``hidden_dim`` (default ``out_dim``: the second block
    repeats the first at the same width). Linear layers keep PyTorch's default init.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        structure: str = "fc_relu",
        hidden_dim: int | None = None,
    ) -> None:
        if structure not in GENERATOR_STRUCTURES:
            raise ValueError(
                f"unknown generator {structure!r}; choose one of {', '.join(GENERATOR_STRUCTURES)}"
            )
        hidden = out_dim if hidden_dim is None else hidden_dim
        layers: list[nn.Module]
        if structure == "fc_relu":
            layers = [nn.Linear(in_dim, out_dim), nn.ReLU()]
        elif structure == "fc":
            layers = [nn.Linear(in_dim, out_dim)]
        elif structure == "2fc_relu":
            layers = [nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim), nn.ReLU()]
        else:  # fc_relu_fc
            layers = [nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)]
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.structure = structure


class WeightBranch(nn.Module):
    """F^w: Iz (T4/T5) followed by the weight generator (T6).

    Args:
        out_dim: what the fusion needs (``fusion.weight_dim``; ``E*B*D`` for a conv).
        in_channels: ``F``, channels of the PoI features (Iz length for feature Iz).
        parts, design, anchor_shape: see :func:`build_iz`.
        structure, hidden_dim: see :class:`WeightGenerator`.
    """

    def __init__(
        self,
        out_dim: int,
        in_channels: int = 256,
        parts: str | Iterable[str] = IZ_PARTS,
        design: str = "default",
        anchor_shape: bool = True,
        structure: str = "fc_relu",
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.parts = parse_iz_parts(parts)
        self.design = check_iz_design(design)
        self.anchor_shape = bool(anchor_shape)
        self.in_channels = in_channels
        self.iz_dim = iz_dim(self.parts, self.design, self.anchor_shape, in_channels)
        self.generator = WeightGenerator(self.iz_dim, out_dim, structure, hidden_dim)

    @property
    def out_dim(self) -> int:
        return self.generator.out_dim

    def forward(self, queries: InstanceQueries, poi_features: Sequence[Tensor]) -> Tensor:
        """Dynamic weights ``(N, out_dim)``, in query order."""
        iz = build_iz(queries, self.parts, self.design, self.anchor_shape, poi_features)  # (N, U)
        return self.generator(iz)  # (N, out_dim)

    def extra_repr(self) -> str:
        return (
            f"parts={list(self.parts)}, design={self.design!r}, "
            f"anchor_shape={self.anchor_shape}, U={self.iz_dim}"
        )
