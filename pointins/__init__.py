"""PointINS: point-based instance segmentation (Qi et al., TPAMI 2021)."""

import os

# oneDNN (PyTorch's CPU convolutions) compiles a kernel per convolution and input shape and
# keeps 1024 of them; detection batches change shape every step (scale jitter, aspect
# ratios, five FPN levels), which thrashes that cache and recompiles kernels; 16k entries
# hold a training run's shapes. Read when the first convolution runs; a value set by the
# user wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

from pointins import precision as _precision  # noqa: E402, F401  (registers ${fastest_precision:})
from pointins import slurm as _slurm  # noqa: E402, F401  (registers ${slurm_count:})
