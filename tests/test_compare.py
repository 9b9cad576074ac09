"""benchmarks.compare: what it reads from a run, the schedule it gives a baseline, its table,
and a rerun that skips the finished runs and redoes the unfinished ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from benchmarks import compare
from benchmarks.compare import Run, fitted_schedule, max_time, read_log, table

LOG = """\
[2026-12-07 10:00:00][pointins.engine.callbacks][INFO] - [train] iter 10/2250  eta 0:20:00  lr 1e-4  loss 3.1  data 0.500s  step 0.900s
[2026-12-07 10:00:05][pointins.engine.callbacks][INFO] - [train] iter 20/2250  eta 0:19:00  lr 2e-4  loss 2.9  data 0.010s  step 0.400s
[2026-12-07 10:00:09][pointins.engine.callbacks][INFO] - [train] iter 30/2250  eta 0:18:00  lr 3e-4  loss 2.7  data 0.020s  step 0.380s
[2026-12-07 10:00:13][pointins.engine.callbacks][INFO] - [train] iter 40/2250  eta 0:17:00  lr 4e-4  loss 2.5  data 0.010s  step 0.500s
[2026-12-07 10:16:15][pointins.engine.callbacks][INFO] - [train] done: iter 2250 in 0:16:15
"""  # noqa: E501


def test_read_log_gives_steps_time_and_the_median_step(tmp_path: Path) -> None:
    (tmp_path / "train.log").write_text(LOG)
    steps, seconds, median, planned = read_log(tmp_path / "train.log")
    assert (steps, seconds, planned) == (2250, 16 * 60 + 15, 2250)
    # the first window (start-up) left out; data + step of the others: 0.41, 0.40, 0.51
    assert median == pytest.approx(0.41)
    (tmp_path / "train.log").write_text(LOG.splitlines()[0])
    with pytest.raises(ValueError, match="did not finish"):
        read_log(tmp_path / "train.log")


def test_fitted_schedule_keeps_the_fractions_and_fills_the_budget() -> None:
    optim = {"max_epochs": 7, "scheduler": {"milestones": [5.6, 6.4]}}
    # 975 s at 1.3 s/step, 250 steps an epoch: 3 epochs fit
    schedule = fitted_schedule(975.0, 1.3, 250.0, optim)
    assert schedule["epochs"] == pytest.approx(3.0)
    assert schedule["max_epochs"] == 3
    assert schedule["milestones"] == pytest.approx([2.4, 3 * 6.4 / 7], abs=1e-3)
    assert fitted_schedule(1000.0, 1.3, 250.0, optim)["max_epochs"] == 4  # rounded up
    assert max_time(975.4) == "00:00:16:15" and max_time(90061) == "01:01:01:01"


def run(row: str, seed: int, segm: float, bbox: float) -> Run:
    return Run(row, seed, [], {"segm/AP": segm, "bbox/AP": bbox}, 100, 60.0, 0.5, 70.0, "M", "abc")


def test_table_has_a_row_per_run_and_mean_std_per_row() -> None:
    runs = [run("pointins", 42, 30.0, 30.0), run("maskrcnn", 42, 20.0, 25.0),
            run("pointins", 43, 32.0, 30.0), run("maskrcnn", 43, 22.0, 25.0)]  # fmt: skip
    text = table(runs, "python -m benchmarks.compare x")
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0:2] for r in rows] == [
        ["| pointins", "42"], ["| pointins", "43"], ["| maskrcnn", "42"], ["| maskrcnn", "43"],
        ["| pointins", "mean of 2"], ["| maskrcnn", "mean of 2"],
    ]  # fmt: skip
    segm = text.splitlines()[0].split(" | ").index("segm AP")
    assert rows[4].split(" | ")[segm] == f"31.0 ± {math.sqrt(2):.1f}"
    assert "Machine: M" in text and "Commit: abc" in text


def fake_train(calls: list[str], broken: set[str] | None = None):
    """compare.train writing what train.py leaves: config, train.log, metrics.json."""

    def _train(run_dir: Path, overrides, python=None) -> float:
        name = run_dir.name
        calls.append(name)
        if run_dir.exists():
            for f in run_dir.iterdir():
                if f.is_file():
                    f.unlink()
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        optim = {"max_epochs": 7, "scheduler": {"milestones": [5.6, 6.4]}}
        (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optim": optim}))
        if name in (broken or set()):
            raise RuntimeError(f"train.py exited 1 in {run_dir}")
        (run_dir / "train.log").write_text(LOG.replace("2250", "1750"))
        (run_dir / "metrics.json").write_text(json.dumps({"segm/AP": 30.0, "bbox/AP": 31.0}))
        return 1000.0

    return _train


def test_a_rerun_skips_finished_runs_and_redoes_the_rest(monkeypatch, tmp_path: Path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(compare, "train", fake_train(calls, broken={"mask-pointins-small"}))
    argv = ["experiment=shapes", "--seeds", "1", "--also", "mask=pointins_small",
            "--out", str(tmp_path)]  # fmt: skip
    with pytest.raises(RuntimeError, match="mask-pointins-small"):
        compare.main(argv)
    assert calls == ["pointins", "maskrcnn-probe", "maskrcnn", "mask-pointins-small"]
    timed = json.loads((tmp_path / "seed1" / "maskrcnn" / "run.json").read_text())
    assert timed["budget_seconds"] == 975.0  # PointINS's 0:16:15
    assert "trainer.max_time=00:00:16:15" in timed["overrides"]
    assert timed["schedule"]["max_epochs"] == math.ceil(timed["schedule"]["epochs"])

    calls.clear()
    monkeypatch.setattr(compare, "train", fake_train(calls))
    runs = compare.main(argv)
    assert calls == ["mask-pointins-small"]  # the finished pair is kept
    assert [r.row for r in runs] == ["pointins", "maskrcnn", "mask=pointins_small"]
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert len(saved["runs"]) == 3 and (tmp_path / "compare.md").is_file()

    # measured on another machine: the pair runs again
    calls.clear()
    monkeypatch.setattr(compare, "cpu_name", lambda: "another CPU")
    compare.main(argv)
    assert calls == ["pointins", "maskrcnn-probe", "maskrcnn", "mask-pointins-small"]
