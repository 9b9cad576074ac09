"""``benchmarks.profile_step``: profiler tables with PointINS's stages labelled."""

from __future__ import annotations

import pytest
from test_bench import TINY  # the bench's tiny setting

import pointins.mask.sampling as sampling_module
from benchmarks import profile_step


@pytest.mark.slow  # a profiled training step and inference call: half a minute on 2 cores
def test_training_step_tables_name_the_stages_and_the_waits(tmp_path) -> None:
    before = sampling_module.sample_queries
    text = profile_step.main(
        [
            "--model",
            "pointins-fcos",
            "--train",
            "--steps",
            "1",
            "--rows",
            "200",
            *TINY,
            f"paths.data_dir={tmp_path}",
        ]
    )
    stages = ("pi::sample_queries", "pi::InstanceAwareMask.forward", "pi::mask_loss")
    for stage in (*stages, "pi::DenseDetector.forward_train", "pi::DenseDetector.loss"):
        assert stage in text, stage
    assert "aten::nonzero" in text.split("per call:")[1]  # sampling's candidates
    stages = text.split("per stage")[1].split("calls, by")[0]
    for stage in ("backbone", "FPN", "towers (detector head)", "assignment", "detector losses",
                  "query sampling", "mask targets", "mask module", "mask loss", "backward",
                  "optimiser", "the call, measured without the profiler",
                  "loading and collating its batch (main process)"):  # fmt: skip
        assert f"| {stage} |" in stages, stage
    for part in ("template read", "instance-aware weights", "dynamic conv", "mask head"):
        assert f"| &nbsp;&nbsp;{part} |" in stages, part  # inside the mask module
    assert sampling_module.sample_queries is before  # the labels are taken off again
