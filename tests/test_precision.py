"""``${fastest_precision:}``: bf16 autocast only where the hardware has it natively."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import pointins  # noqa: F401  (registers the resolver)
from pointins.engine.precision import fastest_precision, native_bf16

FLAGS = "fpu vme sse sse2 avx2 avx512f avx512bw avx512vl"


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\n")
    return path


@pytest.mark.parametrize(
    ("extra", "expected"), [("", False), (" avx512_bf16", True), (" amx_bf16 amx_tile", True)]
)
def test_native_bf16_needs_the_cpu_flag(tmp_path: Path, extra: str, expected: bool) -> None:
    # plain AVX512 emulates bfloat16 (slower than fp32): not native
    assert native_bf16("cpu", _cpuinfo(tmp_path, FLAGS + extra)) is expected


def test_unreadable_cpuinfo_means_fp32(tmp_path: Path) -> None:
    assert native_bf16("cpu", tmp_path / "missing") is False


def test_resolver_gives_a_lightning_precision() -> None:
    cfg = OmegaConf.create({"precision": "${fastest_precision:}"})
    assert cfg.precision == fastest_precision()
    assert cfg.precision in ("bf16-mixed", "32-true")
