"""PointINS: point-based instance segmentation (Qi et al., TPAMI 2021)."""

import os

# oneDNN (PyTorch's CPU convolutions) compiles a kernel per convolution and input shape and
# keeps 1024 of them; detection batches change shape every step (scale jitter, aspect
# ratios, five FPN levels), which thrashes that cache and recompiles kernels; 16k entries
# hold a training run's shapes. Read when the first convolution runs; a value set by the
# user wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

from pointins.engine import precision as _precision  # noqa: E402, F401  (registers ${fastest_precision:})
from pointins.engine import slurm as _slurm  # noqa: E402, F401  (registers ${slurm_count:})
from pointins.engine import workers as _workers  # noqa: E402, F401  (registers ${spare_core_workers:})

__all__ = ["Prediction", "Predictor", "Preprocess", "draw"]

_LAZY = {
    "Prediction": "pointins.inference.predictor",
    "Predictor": "pointins.inference.predictor",
    "draw": "pointins.inference.predictor",
    "Preprocess": "pointins.preprocess",
}


def __getattr__(name: str):
    """``from pointins import Predictor`` without importing it (and pycocotools) for every
    ``import pointins``."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pointins' has no attribute {name!r}")
