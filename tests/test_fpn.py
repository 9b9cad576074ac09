"""FPN: P3–P7 at strides 8..128 with the configured width; P6 source selectable."""

from __future__ import annotations

import pytest
import torch

from pointins.necks import FPN


def _inputs():
    return [torch.randn(2, c, 32 // s, 48 // s) for c, s in [(16, 1), (32, 2), (64, 4)]]


@pytest.mark.parametrize("p6_from", ["p5", "c5"])
def test_levels_strides_and_width(p6_from):
    fpn = FPN([16, 32, 64], [8, 16, 32], out_channels=24, p6_from=p6_from)
    outs = fpn(_inputs())
    assert fpn.strides == [8, 16, 32, 64, 128]
    assert [o.shape[1] for o in outs] == [24] * 5
    assert [tuple(o.shape[-2:]) for o in outs] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]


def test_p6_from_c5_reads_c5_even_when_widths_match():
    fpn = FPN([16, 32, 24], [8, 16, 32], out_channels=24, p6_from="c5")
    assert fpn.fpn.extra_blocks.use_P5 is False
    feats = [torch.randn(1, 16, 16, 16), torch.randn(1, 32, 8, 8), torch.randn(1, 24, 4, 4)]
    p6 = fpn(feats)[3]
    feats[2] = feats[2] + 1.0  # changes C5; P6 must change through C5 directly
    assert not torch.allclose(p6, fpn(feats)[3])


def test_bad_p6_source():
    with pytest.raises(ValueError, match="neck.p6_from"):
        FPN([16, 32, 64], [8, 16, 32], p6_from="p4")
