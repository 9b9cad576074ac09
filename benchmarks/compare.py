"""PointINS against torchvision baselines at equal wall clock, over seeds, on one machine.

    python -m benchmarks.compare experiment=shapes --seeds 42 43 44
    python -m benchmarks.compare experiment=shapes --seeds 42 --baselines maskrcnn fcos \\
        --also mask=pointins_small

Per seed, back to back and each alone on the machine: PointINS trains (``train.py`` with
the given overrides and ``seed``); then each baseline (``baseline=<name>``) trains for the
PointINS run's measured training time (its ``[train] done`` time, the final evaluation
included, which the baseline spends training), on the same learning-rate schedule
compressed to the steps that fit that time: a probe of ``--probe-steps`` steps measures the
baseline's step, the schedule's epochs become the ones that fit at that step, the decays
stay at the same fractions of it, ``trainer.max_time`` stops it at the budget in any case;
then it is evaluated by the same evaluator. Each ``--also`` override set trains as PointINS
with those overrides on its own recipe's schedule (not timed to the pair).

Writes to ``--out`` (``bench_results/compare/<machine>/``): one run folder per run
(``seed<S>/<row>/``), ``compare.json`` (every run's metrics, steps, median step, training
and wall-clock seconds, machine and commit) and ``compare.md`` (the paper-style table: one
row per run and seed, then mean ± sample std over the seeds per row). A rerun skips the
runs that finished and starts over any that did not (a timed run cannot continue); a
PointINS run measured on another machine, and the baselines timed to it, run again.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from benchmarks.report import commit, cpu_name

ROOT = Path(__file__).resolve().parents[1]
POINTINS = "pointins"

# "[train] done: iter 3150 in 0:16:15" and "[train] iter 1200/2250  ...  data 0.012s  step 0.213s"
DONE = re.compile(r"\[train\] done: iter (\d+) in (?:(\d+) days?, )?(\d+):(\d\d):(\d\d)")
LINE = re.compile(r"\[train\] iter (\d+)/(\d+) .* data ([\d.]+)s\s+step ([\d.]+)s")
# columns of the table: (metrics.json key, header)
COLUMNS = (
    ("bbox/AP", "bbox AP"),
    ("bbox/AP50", "AP50"),
    ("bbox/AP75", "AP75"),
    ("segm/AP", "segm AP"),
    ("segm/AP50", "AP50"),
    ("segm/AP75", "AP75"),
    ("segm/APs", "segm APs"),
)


@dataclass
class Run:
    """One finished training run of the comparison."""

    row: str  # "pointins", "maskrcnn", "mask=pointins_small", ...
    seed: int
    overrides: list[str]
    metrics: dict[str, float]
    steps: int
    train_seconds: float  # the [train] done time: training loop and final evaluation
    median_step: float  # median over the log lines of (data + step) seconds per batch
    wall_seconds: float  # the whole command
    machine: str
    commit: str
    budget_seconds: float | None = None  # the baseline's max_time (PointINS's train_seconds)
    schedule: dict[str, object] = field(default_factory=dict)


# ------------------------------------------------------------------ reading a run folder
def read_log(log: Path) -> tuple[int, float, float, int | None]:
    """``(steps, train seconds, median seconds per batch, total steps planned)`` from a run's
    ``train.log`` (:class:`pointins.engine.callbacks.ProgressLines`' lines)."""
    text = log.read_text()
    done = DONE.findall(text)
    if not done:
        raise ValueError(f"{log}: no '[train] done' line: the run did not finish")
    steps, days, h, m, s = done[-1]
    seconds = 86400 * int(days or 0) + 3600 * int(h) + 60 * int(m) + int(s)
    lines = LINE.findall(text)
    per_batch = [float(data) + float(step) for _, _, data, step in lines[1:]] or [math.nan]
    total = int(lines[-1][1]) if lines else None
    return int(steps), float(seconds), statistics.median(per_batch), total


def metrics_of(run_dir: Path) -> dict[str, float]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise ValueError(f"{path}: missing: the run was not evaluated")
    return {k: float(v) for k, v in json.loads(path.read_text()).items() if "/AP-" not in k}


# ------------------------------------------------------------------------- the machine
def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


# ----------------------------------------------------------------------------- running
def train(run_dir: Path, overrides: Sequence[str], python: str = sys.executable) -> float:
    """``train.py overrides`` into ``run_dir`` (a fresh start); the command's wall clock."""
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished timed run cannot continue: start over
    run_dir.mkdir(parents=True)
    command = [
        python,
        str(ROOT / "train.py"),
        *overrides,
        f"hydra.run.dir={run_dir}",
        "resume=false",
    ]
    print("$", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    with open(run_dir / "stdout.log", "w") as out:
        code = subprocess.call(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if code != 0:
        tail = (run_dir / "stdout.log").read_text().splitlines()[-15:]
        raise RuntimeError(f"train.py exited {code} in {run_dir}:\n" + "\n".join(tail))
    return wall


def run_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())


def finished(run_dir: Path, machine: str) -> Run | None:
    """The run recorded in ``run_dir/run.json`` if it finished on this machine."""
    record = run_dir / "run.json"
    if not record.is_file():
        return None
    run = Run(**json.loads(record.read_text()))
    return run if run.machine == machine else None


def record(run_dir: Path, run: Run) -> Run:
    (run_dir / "run.json").write_text(json.dumps(asdict(run), indent=2) + "\n")
    return run


def measured(run_dir: Path, row: str, seed: int, overrides: list[str], wall: float, **kw) -> Run:
    steps, seconds, median, _ = read_log(run_dir / "train.log")
    return Run(
        row=row,
        seed=seed,
        overrides=overrides,
        metrics=metrics_of(run_dir),
        steps=steps,
        train_seconds=seconds,
        median_step=median,
        wall_seconds=wall,
        machine=kw.pop("machine"),
        commit=kw.pop("commit"),
        **kw,
    )


def fitted_schedule(
    budget: float, seconds_per_step: float, steps_per_epoch: float, optim: dict
) -> dict[str, object]:
    """The recipe's schedule (``optim.max_epochs``, epoch milestones) compressed to the
    steps that ``budget`` seconds hold at ``seconds_per_step``: the same warm-up, the decays
    at the same fractions of the run. ``max_epochs`` is rounded up (Lightning counts whole
    epochs): ``trainer.max_time`` ends the run at the budget."""
    epochs = budget / seconds_per_step / steps_per_epoch  # the epochs that fit
    scale = epochs / float(optim["max_epochs"])
    milestones = [round(m * scale, 3) for m in optim["scheduler"]["milestones"]]
    return {"max_epochs": max(1, math.ceil(epochs)), "milestones": milestones, "epochs": epochs}


def max_time(seconds: float) -> str:
    """``DD:HH:MM:SS`` for ``trainer.max_time``."""
    s = int(round(seconds))
    return f"{s // 86400:02d}:{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def run_pair(args: argparse.Namespace, seed: int, machine: str, code: str) -> list[Run]:
    base = [*args.overrides, f"seed={seed}"]
    out = args.out / f"seed{seed}"
    runs: list[Run] = []

    pointins_dir = out / POINTINS
    pointins = finished(pointins_dir, machine)
    if pointins is None:
        wall = train(pointins_dir, base)
        pointins = record(
            pointins_dir,
            measured(pointins_dir, POINTINS, seed, base, wall, machine=machine, commit=code),
        )
    runs.append(pointins)
    planned = read_log(pointins_dir / "train.log")[3]  # max_epochs x steps per epoch
    spe = planned / float(run_config(pointins_dir)["optim"]["max_epochs"])

    for name in args.baselines:
        run_dir = out / name
        done = finished(run_dir, machine)
        if done is not None and done.budget_seconds == pointins.train_seconds:
            runs.append(done)
            continue
        with_baseline = [*base, f"baseline={name}"]
        probe_dir = out / f"{name}-probe"
        probe = [f"trainer.max_steps={args.probe_steps}", "trainer.limit_val_batches=0"]
        train(probe_dir, [*with_baseline, *probe])
        step = read_log(probe_dir / "train.log")[2]
        schedule = fitted_schedule(
            pointins.train_seconds, step, spe, run_config(probe_dir)["optim"]
        )
        shutil.rmtree(probe_dir)
        timed = [
            *with_baseline,
            f"trainer.max_time={max_time(pointins.train_seconds)}",
            f"optim.max_epochs={schedule['max_epochs']}",
            f"optim.scheduler.milestones=[{','.join(map(str, schedule['milestones']))}]",
        ]
        wall = train(run_dir, timed)
        runs.append(
            record(
                run_dir,
                measured(
                    run_dir,
                    name,
                    seed,
                    timed,
                    wall,
                    machine=machine,
                    commit=code,
                    budget_seconds=pointins.train_seconds,
                    schedule={**schedule, "probe_seconds_per_step": step},
                ),
            )
        )

    for also in args.also:
        run_dir = out / slug(also)
        done = finished(run_dir, machine)
        if done is None:
            overrides = [*base, *also.split()]
            wall = train(run_dir, overrides)
            done = record(
                run_dir,
                measured(run_dir, also, seed, overrides, wall, machine=machine, commit=code),
            )
        runs.append(done)
    return runs


# ------------------------------------------------------------------------------ tables
def _cell(values: Sequence[float], digits: int = 1) -> str:
    if not values or any(math.isnan(v) for v in values):
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _ratio(run: Run) -> float:
    bbox = run.metrics.get("bbox/AP", math.nan)
    return run.metrics.get("segm/AP", math.nan) / bbox if bbox else math.nan


def table(runs: Sequence[Run], command: str) -> str:
    """Markdown: a row per run, then per row of the comparison mean ± std over its seeds."""
    header = ["run", "seed", *(h for _, h in COLUMNS), "segm/bbox", "steps", "median step",
              "training", "wall clock"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def fmt(values: list[float], digits: int = 1) -> list[str]:
        return [_cell(values, digits)]

    rows = list(dict.fromkeys(r.row for r in runs))
    for per_seed in (True, False):
        for row in rows:
            of_row = [r for r in runs if r.row == row]
            groups = [[r] for r in of_row] if per_seed else [of_row]
            for group in groups:
                if not per_seed and len(group) < 2:
                    continue
                seed = str(group[0].seed) if per_seed else f"mean of {len(group)}"
                cells = [f"`{row}`" if "=" in row else row, seed]
                for key, _ in COLUMNS:
                    cells += fmt([r.metrics.get(key, math.nan) for r in group])
                cells += fmt([_ratio(r) for r in group], 2)
                cells += fmt([float(r.steps) for r in group], 0)
                cells += [_cell([r.median_step for r in group], 2) + " s"]
                cells += [_cell([r.train_seconds / 60 for r in group]) + " min"]
                cells += [_cell([r.wall_seconds / 60 for r in group]) + " min"]
                lines.append("| " + " | ".join(cells) + " |")
    machines = sorted({r.machine for r in runs})
    commits = sorted({r.commit for r in runs})
    lines += [
        "",
        f"Command: `{command}`. Machine: {'; '.join(machines)}. Commit: {', '.join(commits)}.",
        "Baselines train for the PointINS run's training time of their seed (`training`), on "
        "the recipe's schedule compressed to the steps that fit it; `wall clock` is the whole "
        "command.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("overrides", nargs="*", help="train.py overrides for every run")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--baselines", nargs="*", default=["maskrcnn"],
                   choices=["maskrcnn", "fcos", "retinanet"])  # fmt: skip
    p.add_argument(
        "--also",
        nargs="*",
        default=[],
        help="PointINS variants as override strings, e.g. 'mask=pointins_small'",
    )
    p.add_argument(
        "--probe-steps",
        type=int,
        default=60,
        help="steps of the baseline probe that measures its step time",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default bench_results/compare/<machine>)",
    )
    args = p.parse_args(argv)
    if args.out is None:
        args.out = ROOT / "bench_results" / "compare" / slug(cpu_name())
    return args


def main(argv: Sequence[str] | None = None) -> list[Run]:
    args = parse_args(argv)
    command = "python -m benchmarks.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    machine, code = cpu_name(), commit()
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    for seed in args.seeds:
        runs += run_pair(args, seed, machine, code)
        # written after every seed: an interrupted comparison keeps its finished pairs
        (args.out / "compare.json").write_text(
            json.dumps({"command": command, "runs": [asdict(r) for r in runs]}, indent=2) + "\n"
        )
        (args.out / "compare.md").write_text(table(runs, command))
    print(table(runs, command))
    return runs


if __name__ == "__main__":
    main()
