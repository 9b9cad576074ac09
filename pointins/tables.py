"""Paper-style result tables from a Hydra multirun directory.

    python -m pointins.tables multirun/ablation_iz_inputs/2026-11-25/10-00-00 [--csv FILE]

The sweep's rows come from the directory's ``multirun.yaml`` (``hydra.sweeper.params``,
expanded as Hydra's basic sweeper does), so jobs that never started are listed too. Each
job directory is matched by its ``.hydra/overrides.yaml``; its ``metrics.json`` gives AP,
AP50 and AP75 (``segm/``, or ``bbox/`` for a run without masks) and, when present,
``speed/images_per_second`` (the T11 test-scale sweep). Rows keep the table's order; the
row whose values equal the un-swept configuration is marked ``(default)``; a job with a
directory but no ``metrics.json`` is ``failed``, one without a directory ``missing``.
Prints Markdown; ``--csv`` also writes CSV.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

METRICS = ("AP", "AP50", "AP75")
FPS_KEY = "speed/images_per_second"


@dataclass
class Row:
    setting: str  # the swept values, e.g. "iz_parts=[io,offset]"
    overrides: list[str]  # the job's swept overrides
    status: str  # ok | failed | missing
    default: bool
    metrics: dict[str, float]


def sweep_jobs(params: dict[str, str]) -> list[list[str]]:
    """Per-job override lists, in launch order, as Hydra's basic sweeper expands them."""
    lines = [f"{key}={value}" for key, value in params.items()]
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
    config_file = sweep_dir / "multirun.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} not found: pass the folder of one `python train.py -m ...` "
            "(multirun/<task>/<date>/<time>)"
        )
    cfg = OmegaConf.load(config_file)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params or {})
    if not params:
        raise ValueError(f"{config_file}: hydra.sweeper.params is empty; not a sweep")
    base = list(cfg.hydra.overrides.task)
    swept_keys = {_parsed_value(f"{k}=0")[0] for k in params}
    fixed = [o for o in base if _parsed_value(o)[0] not in swept_keys]
    dirs = _job_dirs(sweep_dir)
    rows = []
    for job in sweep_jobs(params):
        job_dir = dirs.get(tuple(sorted([*fixed, *job])))
        default = all(_value(cfg, k) == v for k, v in map(_parsed_value, job))
        setting = ", ".join(
            f"{o.split('=', 1)[0].split('.')[-1]}={o.split('=', 1)[1]}" for o in job
        )
        metrics_file = job_dir / "metrics.json" if job_dir is not None else None
        if metrics_file is not None and metrics_file.is_file():
            raw = json.loads(metrics_file.read_text())
            prefix = "segm" if "segm/AP" in raw else "bbox"
            metrics = {m: float(raw[f"{prefix}/{m}"]) for m in METRICS if f"{prefix}/{m}" in raw}
            if FPS_KEY in raw:
                metrics["FPS"] = float(raw[FPS_KEY])
            rows.append(Row(setting, job, "ok", default, metrics))
        else:
            rows.append(Row(setting, job, "missing" if job_dir is None else "failed", default, {}))
    return str(cfg.task_name), rows


def _columns(rows: list[Row]) -> list[str]:
    extra = ["FPS"] if any("FPS" in r.metrics for r in rows) else []
    return ["setting", *METRICS, *extra, "status"]


def _cells(row: Row, columns: list[str]) -> list[str]:
    setting = row.setting + (" (default)" if row.default else "")
    values = [f"{row.metrics[c]:.1f}" if c in row.metrics else "—" for c in columns[1:-1]]
    return [setting, *values, row.status]


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="a multirun folder: multirun/<task>/<date>/<time>")
    parser.add_argument("--csv", help="also write the table as CSV to this file")
    args = parser.parse_args(argv)
    title, rows = read_sweep(args.sweep_dir)
    sys.stdout.write(to_markdown(title, rows))
    if args.csv:
        Path(args.csv).write_text(to_csv(rows))
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
