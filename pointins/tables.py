"""Paper-style result tables from a Hydra multirun directory.

    python -m pointins.tables multirun/ablation_iz_inputs/2026-11-25/10-00-00 [--csv FILE] [--wandb]

The sweep's jobs come from the directory's ``multirun.yaml`` (``hydra.sweeper.params`` and
the command line's sweeps, e.g. ``seed=1,2,3``, expanded as Hydra's basic sweeper does), so
jobs that never started are listed too. Each job directory is matched by its
``.hydra/overrides.yaml``; its ``metrics.json`` gives AP, AP50 and AP75 (``segm/``, or
``bbox/`` for a run without masks) and, when present, ``speed/images_per_second`` (the T11
test-scale sweep). A row is one setting of the ablation's axes (``setting``; a row of
several options, ``row={E:36,K:8}``, is labelled by the entries it changes from the
configured one) and of the command line's axes (a column each); jobs that differ only in
``seed`` are one row with the mean ± sample standard deviation of each metric over the
``n`` seeds that have metrics.
Rows keep the table's order; the row whose values equal the un-swept configuration is
marked ``(default)``; a job with a directory but no ``metrics.json`` is ``failed``, one
without a directory ``missing`` (a row of seeds of which only some have metrics says
``<n>/<jobs> ok``). Prints Markdown; ``--csv`` also writes CSV; ``--wandb`` logs the table
to a W&B run of job type ``table`` in the sweep's group (:func:`wandb_group`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the basic sweeper's own expansion (not public API; hydra-core is pinned to 1.3.*), so the
# table lists the jobs exactly as `-m` launched them
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

METRICS = ("AP", "AP50", "AP75")
FPS_KEY = "speed/images_per_second"
SEED_KEY = "seed"  # jobs differing only in this key are averaged into one row


@dataclass
class Row:
    setting: str  # the ablation's swept values, e.g. "iz_parts=[io,offset]"
    overrides: list[str]  # the row's swept overrides, seed left out
    status: str  # ok | failed | missing | <n>/<jobs> ok
    default: bool
    metrics: dict[str, float]  # mean over the row's jobs with metrics
    axes: dict[str, str] = field(default_factory=dict)  # command-line axis column -> value
    std: dict[str, float] = field(default_factory=dict)  # sample std over >= 2 seeds
    n: int = 0  # jobs with metrics
    seeds: list[str] = field(default_factory=list)  # the row's seeds, when seed is swept


def sweep_jobs(params: dict[str, str], arguments: list[str] | None = None) -> list[list[str]]:
    """Per-job override lists, in launch order, as Hydra's basic sweeper expands them: the
    config's ``params`` first, then the command line's ``arguments`` (which win on a
    shared key). A job's list holds every override, as its ``.hydra/overrides.yaml`` does
    when ``arguments`` are given."""
    lines = [f"{key}={value}" for key, value in params.items()] + list(arguments or [])
    parsed = OverridesParser.create().parse_overrides(lines)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _value(cfg: DictConfig, key: str) -> object:
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _parsed_value(override: str) -> tuple[str, object]:
    parsed = OverridesParser.create().parse_override(override)
    return parsed.key_or_group, parsed.value()


def _job_dirs(sweep_dir: Path) -> dict[tuple[str, ...], Path]:
    """Job directory of each job, keyed by its sorted overrides."""
    found = {}
    for overrides_file in sweep_dir.glob("**/.hydra/overrides.yaml"):
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file))
        found[tuple(sorted(overrides))] = overrides_file.parent.parent
    return found


def read_sweep(sweep_dir: str | Path) -> tuple[str, list[Row]]:
    """(title, rows) of the multirun in ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    cfg = _load_multirun(sweep_dir)
    swept_params = cfg.hydra.sweeper.params  # None or empty without an ablation
    params = OmegaConf.to_container(swept_params) if swept_params else {}
    base = list(cfg.hydra.overrides.task)
    parser = OverridesParser.create()
    ablation_keys = {parser.parse_override(f"{k}=0").get_key_element() for k in params}
    cli_keys = [o.get_key_element() for o in parser.parse_overrides(base) if o.is_sweep_override()]
    if not ablation_keys and not cli_keys:
        raise ValueError(
            f"{sweep_dir / 'multirun.yaml'}: neither hydra.sweeper.params nor the command line "
            "sweeps anything; not a sweep"
        )
    swept = {*ablation_keys, *cli_keys}
    dirs = _job_dirs(sweep_dir)
    # one row per setting of the swept keys but seed, in launch order
    groups: dict[tuple[str, ...], list[tuple[list[str], Path | None]]] = {}
    for job in sweep_jobs(params, base):
        row_key = tuple(o for o in job if _key(o) in swept and _key(o) != SEED_KEY)
        groups.setdefault(row_key, []).append((job, dirs.get(tuple(sorted(job)))))
    rows = []
    for row_key, jobs in groups.items():
        ablation = [o for o in row_key if _key(o) in ablation_keys and _key(o) not in cli_keys]
        axes = {_column(o): o.split("=", 1)[1] for o in row_key if _key(o) in cli_keys}
        parsed = [(o, *_parsed_value(o)) for o in ablation]  # (override, key, value)
        default = bool(parsed) and all(_value(cfg, k) == v for _, k, v in parsed)
        setting = ", ".join(_setting(cfg, *entry) for entry in parsed) or "—"
        seeds = [o.split("=", 1)[1] for job, _ in jobs for o in job if _key(o) == SEED_KEY]
        row = _merge_jobs([job_dir for _, job_dir in jobs])
        row.setting, row.overrides, row.default, row.axes = setting, list(row_key), default, axes
        row.seeds = seeds if SEED_KEY in swept else []
        rows.append(row)
    return str(cfg.task_name), rows


def _setting(cfg: DictConfig, override: str, key: str, value: object) -> str:
    """A row's label for one swept override (parsed: ``key``, ``value``): ``column=value``;
    a dict (one row of several options, ``row={E:9,K:16}``) as its entries that differ from
    the configured dict, or all of them where none does (the configured row)."""
    if not isinstance(value, dict):
        return f"{_column(override)}={override.split('=', 1)[1]}"
    configured = _value(cfg, key)
    configured = configured if isinstance(configured, dict) else {}
    changed = {k: v for k, v in value.items() if k not in configured or configured[k] != v}
    return ", ".join(f"{k}={_yaml_value(v)}" for k, v in (changed or value).items())


def _yaml_value(value: object) -> str:
    """``value`` as an override writes it: true, null, 2.0, box."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _load_multirun(sweep_dir: Path) -> DictConfig:
    config_file = sweep_dir / "multirun.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} not found: pass the folder of one `python train.py -m ...` "
            "(multirun/<task>/<date>/<time>)"
        )
    return OmegaConf.load(config_file)


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def _column(override: str) -> str:
    """The column name of an override: its key's last part (``model.mask.fusion`` → fusion)."""
    return _key(override).split(".")[-1]


def _job_metrics(metrics_file: Path) -> dict[str, float]:
    raw = json.loads(metrics_file.read_text())
    prefix = "segm" if "segm/AP" in raw else "bbox"
    metrics = {m: float(raw[f"{prefix}/{m}"]) for m in METRICS if f"{prefix}/{m}" in raw}
    if FPS_KEY in raw:
        metrics["FPS"] = float(raw[FPS_KEY])
    return metrics


def _merge_jobs(job_dirs: list[Path | None]) -> Row:
    """A row's status and metrics from its jobs' directories (several: one per seed)."""
    results = [
        _job_metrics(d / "metrics.json")
        for d in job_dirs
        if d is not None and (d / "metrics.json").is_file()
    ]
    if len(results) == len(job_dirs):
        status = "ok"
    elif results:
        status = f"{len(results)}/{len(job_dirs)} ok"
    else:
        status = "failed" if any(d is not None for d in job_dirs) else "missing"
    names = list(dict.fromkeys(name for r in results for name in r))
    values = {name: [r[name] for r in results if name in r] for name in names}
    mean = {name: statistics.fmean(v) for name, v in values.items()}
    std = {name: statistics.stdev(v) for name, v in values.items() if len(v) >= 2}
    return Row("", [], status, False, mean, std=std, n=len(results))


def _metric_columns(rows: list[Row]) -> list[str]:
    return [*METRICS, *(["FPS"] if any("FPS" in r.metrics for r in rows) else [])]


def _axis_columns(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(c for r in rows for c in r.axes))


def _averaged(rows: list[Row]) -> bool:
    return any(r.seeds for r in rows)


def _columns(rows: list[Row]) -> list[str]:
    n = ["n"] if _averaged(rows) else []
    return ["setting", *_axis_columns(rows), *_metric_columns(rows), *n, "status"]


def _metric_cell(row: Row, name: str) -> str:
    if name not in row.metrics:
        return "—"
    if name in row.std:
        return f"{row.metrics[name]:.1f} ± {row.std[name]:.1f}"
    return f"{row.metrics[name]:.1f}"


def _cells(row: Row, columns: list[str]) -> list[str]:
    setting = row.setting + (" (default)" if row.default else "")
    axes = [row.axes.get(c, "—") for c in columns[1:] if c not in (*METRICS, "FPS", "n", "status")]
    values = [_metric_cell(row, c) for c in columns if c in (*METRICS, "FPS")]
    n = [str(row.n)] if "n" in columns else []
    return [setting, *axes, *values, *n, row.status]


def to_markdown(title: str, rows: list[Row]) -> str:
    columns = _columns(rows)
    lines = [f"**{title}**", "", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(_cells(r, columns)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row]) -> str:
    columns = _columns(rows)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*columns, "default"])
    for row in rows:
        cells = _cells(row, columns)
        writer.writerow([row.setting, *cells[1:], row.default])
    return out.getvalue()


def table_data(rows: list[Row]) -> tuple[list[str], list[list[Any]]]:
    """(columns, data) of the table with numbers as numbers, for ``wandb.Table``: per metric
    its mean and, when seeds are averaged, ``<metric> std`` and ``n``; None where missing."""
    metrics = _metric_columns(rows)
    averaged = _averaged(rows)
    metric_columns = [c for m in metrics for c in ([m, f"{m} std"] if averaged else [m])]
    columns = [
        "setting", *_axis_columns(rows), *metric_columns, *(["n"] if averaged else []),
        "status", "default",
    ]  # fmt: skip
    data = []
    for row in rows:
        values = []
        for m in metrics:
            values.append(row.metrics.get(m))
            if averaged:
                values.append(row.std.get(m))
        axes = [row.axes.get(c) for c in _axis_columns(rows)]
        n = [row.n] if averaged else []
        data.append([row.setting, *axes, *values, *n, row.status, row.default])
    return columns, data


def wandb_group(sweep_dir: str | Path) -> str:
    """The W&B group of a sweep's runs, "<ablation> <date> <time>" (``iz_inputs 2026-11-29
    12:03:11``), from the folder ``multirun/<task>/<date>/<time>``: the ablation is the
    ``ablation`` choice in its ``multirun.yaml`` (or, without one, the task name without its
    ``ablation_`` prefix), date and time are the folder's last two names, the time's ``-``
    written ``:``."""
    sweep_dir = Path(sweep_dir).resolve()
    cfg = _load_multirun(sweep_dir)
    ablation = OmegaConf.select(cfg, "hydra.runtime.choices.ablation", default=None)
    if not ablation:
        ablation = str(cfg.task_name).removeprefix("ablation_")
    return f"{ablation} {sweep_dir.parent.name} {sweep_dir.name.replace('-', ':')}"


def log_to_wandb(
    sweep_dir: str | Path,
    title: str,
    rows: list[Row],
    project: str | None = None,
    dir: str | Path | None = None,  # noqa: A002  (wandb.init's name)
) -> Any:
    """Log the table as a ``wandb.Table`` under ``table`` to a new W&B run of job type
    ``table`` in the sweep's group (:func:`wandb_group`), named after the sweep; returns
    the table. The project is ``project``, else the sweep's ``logger.wandb.project``, else
    ``pointins``; online or offline as ``WANDB_MODE`` says."""
    import wandb

    cfg = _load_multirun(Path(sweep_dir))
    project = project or OmegaConf.select(cfg, "logger.wandb.project", default=None) or "pointins"
    group = wandb_group(sweep_dir)
    columns, data = table_data(rows)
    table = wandb.Table(columns=columns, data=data)
    run = wandb.init(
        project=project,
        group=group,
        job_type="table",
        name=f"{group} table",
        dir=str(dir) if dir is not None else None,
        config={"sweep_dir": str(Path(sweep_dir).resolve()), "title": title},
    )
    try:
        run.log({"table": table})
        run.summary["markdown"] = to_markdown(title, rows)
    finally:
        run.finish()
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="a multirun folder: multirun/<task>/<date>/<time>")
    parser.add_argument("--csv", help="also write the table as CSV to this file")
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the table to a W&B run (job type 'table') in the sweep's group",
    )
    parser.add_argument("--project", help="W&B project (default: the sweep's logger's)")
    args = parser.parse_args(argv)
    title, rows = read_sweep(args.sweep_dir)
    sys.stdout.write(to_markdown(title, rows))
    if args.csv:
        Path(args.csv).write_text(to_csv(rows))
        print(f"wrote {args.csv}")
    if args.wandb:
        log_to_wandb(args.sweep_dir, title, rows, project=args.project)
        print(f"logged the table to W&B, group {wandb_group(args.sweep_dir)!r}")


if __name__ == "__main__":
    main()
