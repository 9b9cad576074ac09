"""``make bench``: the benchmark measures what it says, end to end on a tiny setting
(:mod:`benchmarks.measure`, :mod:`benchmarks.cases`, :mod:`benchmarks.report`, the CLI)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench, cases, measure

TINY = [
    "--size",
    "96",
    "--max-size",
    "128",
    "--detections",
    "20",
    "--detection-counts",
    "5",
    "--scales",
    "96",
    "--eval-images",
    "2",
    "4",
    "--loader-batches",
    "2",
    "--warmup",
    "0",
    "--repeats",
    "1",
    "--train-repeats",
    "1",
    "--skip-stock",
    "data.batch_size=2",
    "data.num_workers=0",
]


def test_measure_reports_the_median_and_counts_every_call() -> None:
    calls = []
    result = measure.measure(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=5)
    assert len(calls) == 8 and len(result["times"]) == 5  # and one for the memory peak
    assert result["seconds"] == sorted(result["times"])[2]


def test_tensor_peak_is_the_most_held_at_once_over_the_start() -> None:
    held = torch.zeros(1 << 20)  # 4 MiB allocated before: not counted, freed inside: no credit
    mib = 1 << 18  # float32 elements per MiB

    def work() -> None:
        nonlocal held
        held = None
        a = torch.ones(3 * mib)  # 3 MiB
        b = torch.ones(5 * mib)  # 8 MiB held: the peak
        del a, b
        c = torch.ones(6 * mib)  # 6 MiB
        del c

    assert measure.tensor_peak_mib(work, torch.device("cpu")) == pytest.approx(8.0, abs=0.01)


@pytest.mark.slow
def test_bench_runs_every_case_and_writes_the_table(tmp_path) -> None:
    data = tmp_path / "data"
    results = bench.main(
        [
            *TINY,
            "--out",
            str(tmp_path / "bench"),
            "--eval-data",
            str(tmp_path / "eval"),
            f"paths.data_dir={data}",
        ]
    )
    kinds = [case["kind"] for case, _ in results]
    # 5 models, 4K masks, the other templates, onnxruntime; 3 detection counts; 3 scales
    assert kinds.count("infer") == 8 + 3 + 3 and kinds.count("train") == 5 + 2 + 2
    for case, result in results:
        if case["kind"] == "infer":
            # the fixed detection count is what every model is timed with
            assert result["detections_per_image"] == case.get("detections", 20), case
    table = (tmp_path / "bench" / "bench.md").read_text()
    assert "| pointins-fcos | fp32 |" in table and "Mask module share" in table
    assert "| pointins-fcos + checkpoint_towers | fp32 |" in table and "peak RSS MiB" in table
    for case, result in results:
        if case["kind"] in ("infer", "train"):
            assert result["peak_mib"] > 0 and "rss_mib" in result, case  # CPU: both
    saved = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert len(saved["results"]) == len(results)


def test_cpu_cases_get_a_fresh_process_and_cuda_cases_share_one() -> None:
    # the CPU's peak resident set is process-wide; CUDA's peak statistics reset per case
    assert measure.case_runner("cpu") is measure.in_fresh_process
    assert measure.case_runner("cuda") is measure.in_this_process
    assert measure.case_runner("cuda:0") is measure.in_this_process
    assert measure.in_this_process(divmod, 7, 3) == (2, 1)


def test_loader_case_reads_past_the_end_of_a_small_dataset() -> None:
    batches = measure.epochs([["a"], ["b", "c"]])
    assert [next(batches) for _ in range(5)] == [["a"], ["b", "c"], ["a"], ["b", "c"], ["a"]]


def test_only_keeps_the_chosen_kinds() -> None:
    planned = cases.plan(bench.parse_args([*TINY, "--only", "loader", "eval_memory"]))
    assert [c["kind"] for c in planned] == ["loader", "eval_memory"]
    with pytest.raises(SystemExit):  # argparse names the choices
        bench.parse_args([*TINY, "--only", "inference"])
    chosen = cases.plan(bench.parse_args([*TINY, "--only", "train", "--models", "maskrcnn"]))
    assert [(c["kind"], c["model"]) for c in chosen] == [("train", "maskrcnn")]


@pytest.mark.parametrize(("experiment", "other"), [("shapes", "point"), ("none", "box")])
def test_the_other_template_read_is_timed_beside_the_recipes(experiment, other) -> None:
    planned = cases.plan(bench.parse_args(["--experiment", experiment, "--only", "infer"]))
    variants = [c for c in planned if c.get("variant") == f"{other} templates"]
    assert len(variants) == 1
    assert variants[0]["overrides"] == [f"model.mask.template_from={other}"]


def test_eval_memory_is_read_after_every_checkpoint_of_one_pass(tmp_path) -> None:
    results = bench.main(
        [
            *TINY,
            "--only",
            "eval_memory",
            "--out",
            str(tmp_path / "bench"),
            "--eval-data",
            str(tmp_path / "eval"),
        ]
    )
    [(case, result)] = results
    readings = result["readings"]
    assert case["checkpoints"] == [2, 4] and [r["images"] for r in readings] == [2, 4]
    # one pass: the peak so far can only rise, and the largest input too
    assert readings[0]["peak_mib"] <= readings[1]["peak_mib"]
    area = [r["largest_original"][0] * r["largest_original"][1] for r in readings]
    assert 0 < area[0] <= area[1]
    table = (tmp_path / "bench" / "bench.md").read_text()
    assert "| 4 |" in table and "images/s" not in table  # only what ran is reported


def test_overrides_may_come_before_and_after_options() -> None:
    args = bench.parse_args(["data.batch_size=2", "--size", "96", "model.mask.K=8"])
    assert args.size == 96 and args.overrides == ["data.batch_size=2", "model.mask.K=8"]


def _run(case: dict, tmp_path, *extra: str) -> dict:
    args = bench.parse_args([*TINY, "--out", str(tmp_path), f"paths.data_dir={tmp_path}", *extra])
    return cases.run_case({**case, "args": vars(args)})


@pytest.mark.slow  # an ONNX export: half a minute; make test exports and runs it in test_export
def test_onnxruntime_row_returns_the_same_detection_count(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    case = {"kind": "infer", "model": "pointins-fcos", "variant": "onnxruntime"}
    assert case in cases.plan(bench.parse_args(TINY))
    result = _run(case, tmp_path)
    assert result["detections_per_image"] == 20 and result["images_per_second"] > 0


def test_compile_runs_are_opt_in() -> None:
    assert not [c for c in cases.plan(bench.parse_args(TINY)) if c["kind"] == "compile"]
    planned = cases.plan(bench.parse_args([*TINY, "--compile", "--size-buckets", "128"]))
    compiled = [c for c in planned if c["kind"] == "compile"]
    assert [c["variant"] for c in compiled] == ["eager", "compile", "compile + size buckets"]
    assert compiled[2]["overrides"] == ["data.size_buckets=[128]"]
    # the runs themselves: tests/test_bench_gpu.py (make bench-gpu runs them on a CPU)


def test_mask_share_is_reported_for_each_template_read_and_precision() -> None:
    from benchmarks.report import report

    args = bench.parse_args(["--amp", "--only", "infer"])  # the demo: box templates

    def infer(model: str, seconds: float, amp: bool, **extra) -> tuple[dict, dict]:
        case = {"kind": "infer", "model": model, "amp": amp, **extra}
        return case, {"seconds": seconds, "images_per_second": 1 / seconds, "peak_mib": 1.0,
                      "detections_per_image": 100}  # fmt: skip

    results = []
    for amp, scale in ((False, 1.0), (True, 0.5)):
        results += [
            infer("maskrcnn", 4 * scale, amp),
            infer("fcos", 0.8 * scale, amp),
            infer("pointins-fcos", 1.0 * scale, amp),
            infer("pointins-fcos", 1.6 * scale, amp, variant="point templates"),
        ]
    table = report(args, results)
    # 1 - t(mask=none) / t(PointINS), per template read and precision
    assert "- PointINS-fcos, box templates, fp32: 20.0 %" in table
    assert "- PointINS-fcos, point templates, fp32: 50.0 %" in table
    assert "- PointINS-fcos, box templates, bf16 autocast: 20.0 %" in table
    assert "| pointins-fcos | fp32 | 1.00 | 4.00 |" in table  # × Mask R-CNN at its precision


def test_a_training_batch_is_of_one_orientation_as_the_loader_groups_them(tmp_path) -> None:
    """The benchmarked training step's batch is what a training step can see: images of
    one orientation (landscape or portrait), the first of the split that share the first
    image's; validation batches keep file order, as the validation loader."""
    from tiny import TINY_DATA

    overrides = [*TINY_DATA, "data.num_train=16", f"paths.data_dir={tmp_path}"]
    cfg = cases.compose_config(overrides, experiment=None)
    read, _ = cases.batch_reader(cfg, train=True)
    dm = cases.build_datamodule(cfg)
    dm.setup("fit")
    orientations = dm.train_dataset.orientations()
    assert len(set(orientations)) == 2  # both kinds exist, so a mixed batch was possible
    first = [i for i, o in enumerate(orientations) if o == orientations[0]][:4]
    expected = dm.train_collate([dm.train_dataset[i] for i in first])
    assert read(4).image_ids == expected.image_ids
    landscape = [w > h for h, w in read(4).image_sizes]
    assert len(set(landscape)) == 1
    dm.setup("validate")
    in_file_order = dm.collate([dm.val_dataset[i] for i in range(2)])
    assert cases.batch_reader(cfg, train=False)[0](2).image_ids == in_file_order.image_ids
