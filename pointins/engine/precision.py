"""Mixed precision where the hardware runs it natively.

``trainer.precision: ${fastest_precision:}`` (the CPU recipe, ``experiment=shapes``)
resolves to ``bf16-mixed`` on hardware with native bfloat16 arithmetic (CUDA GPUs of
compute capability 8.0+, x86 CPUs with AVX512-BF16 or AMX, where it shortens the CPU
recipe's training step: ``make bench ARGS=--amp`` times both) and to ``32-true`` elsewhere, where
bfloat16 would be emulated and slower than fp32. Under autocast the networks run in
bfloat16; the heads hand their outputs to the losses, the box decoder and the mask paste
in fp32.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

#: /proc/cpuinfo flags of x86 CPUs with bfloat16 dot products in hardware
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def native_bf16(device: str | None = None, cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether ``device`` ("cuda" or "cpu"; the one Lightning's ``accelerator=auto``
    picks when None) computes in bfloat16 natively."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if sys.platform != "linux":
        return False  # no cheap, reliable probe; fp32 is the safe default
    return any(flag in _cpu_flags(cpuinfo) for flag in _NATIVE_BF16_FLAGS)


@functools.cache
def fastest_precision() -> str:
    """``bf16-mixed`` where bfloat16 is native (see :func:`native_bf16`), else ``32-true``."""
    precision = "bf16-mixed" if native_bf16() else "32-true"
    log.info("trainer.precision=${fastest_precision:} resolved to %s", precision)
    return precision


OmegaConf.register_new_resolver("fastest_precision", fastest_precision, replace=True)
