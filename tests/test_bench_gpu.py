"""``make bench-gpu``: one process measures every GPU row the docs need; run end to end here
at a tiny size on the CPU, so that the first run on a GPU is the real one."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu


def test_tiny_run_measures_every_section_and_writes_one_table(tmp_path) -> None:
    out = tmp_path / "out"
    table = gpu.main(["--tiny", "--device", "cpu", "--out", str(out), f"paths.data_dir={tmp_path}"])
    assert (out / "bench_gpu.md").read_text() == table
    titles = [title for title, _, _ in gpu.sections(tiny=True)]
    for title in titles:
        assert f"### {title}" in table
    assert "Not run" not in table
    # inference against the standard Mask R-CNN in both precisions; the mask module's share
    batch_1 = table.split("### Training, batch 2")[0]
    for precision in ("fp32", "bf16 autocast"):
        assert f"| pointins-fcos | {precision} |" in batch_1
        assert f"| maskrcnn | {precision} |" in batch_1
        assert f"- PointINS-fcos, box templates, {precision}:" in batch_1
    assert "| pointins-retinanet | fp32 |" in table.split("### Training, batch 2")[1]
    assert "| compile + size buckets |" in table and "| eager |" in table
    saved = json.loads((out / "bench_gpu.json").read_text())
    assert [s["title"] for s in saved["sections"]] == titles
    assert saved["commit"] and saved["seconds"] > 0
    assert saved["command"].startswith("python -m benchmarks.gpu --tiny --device cpu")
    batch = {s["title"]: s["args"]["batch_size"] for s in saved["sections"]}
    assert batch["Inference, batch 1"] == 1 and batch["Inference, batch 2"] == 2
    for section in saved["sections"]:
        assert section["results"], section["title"]
        for row in section["results"]:
            result = row["result"]
            if row["case"]["kind"] in ("infer", "train"):
                assert result["seconds"] > 0 and result["peak_mib"] > 0, row["case"]
            if row["case"]["kind"] == "infer":  # the fixed detection count in every model
                assert result["detections_per_image"] == 20, row["case"]
    # Mask R-CNN's RoI heads sample 512 RoIs per image with up to 128 positives, as in real
    # training; PointINS's mask samples are counted too
    trained = {r["case"]["model"]: r["result"] for r in saved["sections"][1]["results"]}
    assert trained["maskrcnn"]["sampled_rois_per_image"] == [512, 512]
    assert all(0 < m <= 128 for m in trained["maskrcnn"]["mask_rois_per_image"])
    assert all(0 < m <= 128 for m in trained["pointins-fcos"]["mask_rois_per_image"])
    assert "sampled_rois_per_image" not in trained["pointins-fcos"]
    # eager and compiled on the multi-scale loader's first batches (train scales 64 and 96)
    compiled = {r["case"]["variant"]: r["result"] for r in saved["sections"][-1]["results"]}
    assert set(compiled) == {"eager", "compile + size buckets"}
    eager, bucketed = compiled["eager"], compiled["compile + size buckets"]
    assert eager["graphs"] == 0 and 1 <= eager["shapes"] <= 2 and eager["total_seconds"] > 0
    assert bucketed["shapes"] == 1 and bucketed["graphs"] > 0  # every side padded to 128


def test_gpu_sections_are_the_papers_models_at_the_papers_size() -> None:
    planned = {}
    for title, options, overrides in gpu.sections(tiny=False):
        args = gpu.bench_args(False, options, overrides, "--device", "cuda")
        assert (args.experiment, args.size, args.max_size, args.amp) == (None, 800, 1333, True)
        assert "model.backbone.norm=frozen_bn" in args.overrides
        planned[title] = (args, gpu.section_cases(args, tiny=False))
    args, cases = planned["Inference, batch 8"]
    assert args.batch_size == 8
    models = {(c["model"], c["amp"]) for c in cases if "variant" not in c}
    for model in ("pointins-fcos", "pointins-retinanet", "fcos", "retinanet", "maskrcnn"):
        assert {(model, False), (model, True)} <= models
    assert {("maskrcnn_resnet50_fpn", False), ("maskrcnn_resnet50_fpn", True)} <= models
    assert not [c for c in cases if c.get("variant") == "onnxruntime"]
    assert {c["variant"] for c in cases if "variant" in c} == {"4K masks", "box templates"}
    args, cases = planned["Training, batch 8"]
    assert "data.batch_size=8" in args.overrides
    assert {c["model"] for c in cases} == {"pointins-fcos", "pointins-retinanet", "maskrcnn"}
    _, cases = planned["Training PointINS-FCOS eager and compiled"]
    assert [c["variant"] for c in cases] == ["eager", "compile + size buckets"]
    assert cases[1]["overrides"] == ["data.size_buckets=[832,1344]"]
    assert "compile_options" not in cases[1]  # inductor on the GPU


def test_sections_past_the_budget_are_listed_as_not_run(tmp_path) -> None:
    table = gpu.main(["--tiny", "--device", "cpu", "--budget-s", "-1", "--out", str(tmp_path)])
    titles = ", ".join(title for title, _, _ in gpu.sections(tiny=True))
    assert f"Not run (over the -1 s budget): {titles}." in table
    assert json.loads((tmp_path / "bench_gpu.json").read_text())["sections"] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_says_how_to_test(capsys) -> None:
    with pytest.raises(SystemExit):
        gpu.parse_args(["--device", "cuda"])
    assert "--device cpu --tiny" in capsys.readouterr().err
