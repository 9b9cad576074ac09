"""PointINS: point-based instance segmentation (Qi et al., TPAMI 2021)."""

import os

# oneDNN (PyTorch's CPU convolutions) compiles a kernel per convolution and input shape and
# keeps 1024 of them; detection batches change shape every step (scale jitter, aspect
# ratios, five FPN levels), which thrashes that cache: 16k entries make the CPU recipe's
# RetinaNet steps ~15 % faster. Read when the first convolution runs; a user's value wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

from pointins import precision as _precision  # noqa: E402, F401  (registers ${fastest_precision:})
