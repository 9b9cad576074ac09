"""PointINS: point-based instance segmentation (Qi et al., TPAMI 2021)."""

from pointins import precision as _precision  # noqa: F401  (registers ${fastest_precision:})
