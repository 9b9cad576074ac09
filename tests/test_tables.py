"""pointins.tables: a multirun folder becomes the paper's table, rows in sweep order."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import wandb
from omegaconf import OmegaConf

from pointins.tables import (
    log_to_wandb,
    main,
    read_sweep,
    sweep_jobs,
    table_data,
    to_csv,
    to_markdown,
    wandb_group,
)


def _fake_sweep(compose_cfg, root, fusion_results: dict[str, dict | None]):
    """A multirun folder of ablation=fusion: jobs with metrics, without (failed) or absent."""
    base = ["ablation=fusion", "experiment=shapes"]
    cfg = compose_cfg(base)
    cfg.hydra.overrides.task = base
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(OmegaConf.to_yaml(cfg))
    for i, job in enumerate(sweep_jobs(OmegaConf.to_container(cfg.hydra.sweeper.params))):
        fusion = job[0].split("=")[1]
        if fusion not in fusion_results:
            continue  # never launched
        job_dir = root / str(i)
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml([*base, *job]))
        if fusion_results[fusion] is not None:
            (job_dir / "metrics.json").write_text(json.dumps(fusion_results[fusion]))


def test_table_rows_follow_the_paper_and_mark_default_failed_missing(compose_cfg, tmp_path):
    metrics = {"segm/AP": 32.5, "segm/AP50": 51.9, "segm/AP75": 33.8, "bbox/AP": 40.0}
    _fake_sweep(
        compose_cfg, tmp_path / "sweep", {"add": metrics, "concat": None, "conv1x1": metrics}
    )
    title, rows = read_sweep(tmp_path / "sweep")
    assert title == "ablation_fusion"
    assert [r.setting for r in rows] == [
        f"fusion={f}" for f in ("add", "concat", "conv3x3", "conv1x1")
    ]
    assert [r.status for r in rows] == ["ok", "failed", "missing", "ok"]
    assert [r.default for r in rows] == [False, False, False, True]
    assert rows[0].metrics == {"AP": 32.5, "AP50": 51.9, "AP75": 33.8}  # segm preferred
    table = to_markdown(title, rows)
    assert "| fusion=conv1x1 (default) | 32.5 | 51.9 | 33.8 | ok |" in table
    assert "| fusion=conv3x3 | — | — | — | missing |" in table
    assert to_csv(rows).splitlines()[0] == "setting,AP,AP50,AP75,status,default"


def test_a_row_of_several_options_is_labelled_by_what_it_changes(compose_cfg, tmp_path):
    base = ["ablation=mask_quality", "experiment=shapes"]
    cfg = compose_cfg(base)
    cfg.hydra.overrides.task = base
    (tmp_path / "multirun.yaml").write_text(OmegaConf.to_yaml(cfg))
    title, rows = read_sweep(tmp_path)  # no job has run: every row is missing
    assert [r.setting for r in rows] == [
        "maskness=false, output_scale=2, dice=0.0, template_level=null, template_from=point, "
        "loss_weight=2.0",
        "maskness=true",
        "output_scale=4",
        "dice=1.0",
        "template_level=1",
        "template_from=box",
        "template_from=box, loss_weight=1.0",
    ]
    assert [r.default for r in rows] == [True] + [False] * 6
    assert {r.status for r in rows} == {"missing"}
    assert rows[0].overrides[0].startswith("row={maskness:")  # the override as Hydra wrote it


def test_command_prints_markdown_and_writes_csv(compose_cfg, tmp_path, capsys):
    _fake_sweep(compose_cfg, tmp_path / "sweep", {"add": {"bbox/AP": 1.0, "bbox/AP50": 2.0}})
    main([str(tmp_path / "sweep"), "--csv", str(tmp_path / "t.csv")])
    assert "| fusion=add | 1.0 | 2.0 | — | ok |" in capsys.readouterr().out
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 5


def test_not_a_sweep_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="multirun.yaml"):
        read_sweep(tmp_path)


def _seed_sweep(compose_cfg, root: Path, results: dict[tuple[str, str], dict | None]) -> None:
    """``python train.py -m ablation=fusion experiment=shapes seed=1,2,3``: one job folder per
    (fusion, seed) in ``results`` (None: failed), as Hydra writes them."""
    base = ["ablation=fusion", "experiment=shapes"]
    cfg = compose_cfg(base)
    cfg.hydra.overrides.task = [*base, "seed=1,2,3"]
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(OmegaConf.to_yaml(cfg))
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    for i, job in enumerate(sweep_jobs(params, list(cfg.hydra.overrides.task))):
        values = dict(o.split("=", 1) for o in job)
        key = (values["model.mask.fusion"], values["seed"])
        if key not in results:
            continue
        job_dir = root / str(i)
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(job))
        if results[key] is not None:
            (job_dir / "metrics.json").write_text(json.dumps(results[key]))


def _segm(ap: float) -> dict[str, float]:
    return {"segm/AP": ap, "segm/AP50": ap + 20, "segm/AP75": ap + 1}


SEED_RESULTS = {
    ("add", "1"): _segm(30.0),
    ("add", "2"): _segm(32.0),
    ("add", "3"): _segm(34.0),
    ("conv1x1", "1"): _segm(40.0),
    ("conv1x1", "2"): None,  # failed
}


def test_seeds_on_the_command_line_are_averaged_into_one_row(compose_cfg, tmp_path):
    _seed_sweep(compose_cfg, tmp_path / "sweep", SEED_RESULTS)
    title, rows = read_sweep(tmp_path / "sweep")
    assert [r.setting for r in rows] == [
        f"fusion={f}" for f in ("add", "concat", "conv3x3", "conv1x1")
    ]
    add, concat, _, conv1x1 = rows
    assert add.seeds == ["1", "2", "3"] and add.n == 3 and add.status == "ok"
    assert add.metrics == {"AP": 32.0, "AP50": 52.0, "AP75": 33.0}
    assert add.std["AP"] == pytest.approx(statistics.stdev([30.0, 32.0, 34.0]))  # 2.0
    assert (concat.n, concat.status, concat.metrics) == (0, "missing", {})
    assert (conv1x1.n, conv1x1.status, conv1x1.std) == (1, "1/3 ok", {})
    assert conv1x1.default and conv1x1.metrics["AP"] == 40.0
    table = to_markdown(title, rows)
    assert "| setting | AP | AP50 | AP75 | n | status |" in table
    assert "| fusion=add | 32.0 ± 2.0 | 52.0 ± 2.0 | 33.0 ± 2.0 | 3 | ok |" in table
    assert "| fusion=conv1x1 (default) | 40.0 | 60.0 | 41.0 | 1 | 1/3 ok |" in table


def test_a_command_line_axis_other_than_seed_is_a_column(compose_cfg, tmp_path):
    base = ["ablation=fusion", "experiment=shapes"]
    cfg = compose_cfg(base)
    cfg.hydra.overrides.task = [*base, "optim.lr=0.01,0.02"]
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "multirun.yaml").write_text(OmegaConf.to_yaml(cfg))
    jobs = sweep_jobs(
        OmegaConf.to_container(cfg.hydra.sweeper.params), [*base, "optim.lr=0.01,0.02"]
    )
    job_dir = tmp_path / "sweep" / "0"
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(jobs[1]))
    (job_dir / "metrics.json").write_text(json.dumps(_segm(10.0)))
    title, rows = read_sweep(tmp_path / "sweep")
    assert [(r.setting, r.axes) for r in rows[:2]] == [
        ("fusion=add", {"lr": "0.01"}),
        ("fusion=add", {"lr": "0.02"}),
    ]
    table = to_markdown(title, rows)
    assert "| setting | lr | AP | AP50 | AP75 | status |" in table
    assert "| fusion=add | 0.02 | 10.0 | 30.0 | 11.0 | ok |" in table


def test_wandb_group_is_the_ablation_and_the_launch_time(compose_cfg, tmp_path):
    sweep = tmp_path / "multirun" / "ablation_fusion" / "2026-11-29" / "12-03-11"
    _fake_sweep(compose_cfg, sweep, {})
    assert wandb_group(sweep) == "fusion 2026-11-29 12:03:11"


def test_wandb_logs_the_table_offline(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = tmp_path / "multirun" / "ablation_fusion" / "2026-11-29" / "12-03-11"
    _seed_sweep(compose_cfg, sweep, SEED_RESULTS)
    title, rows = read_sweep(sweep)
    init, runs = wandb.init, []
    monkeypatch.setattr(wandb, "init", lambda **kw: runs.append(kw) or init(**kw))
    table = log_to_wandb(sweep, title, rows, dir=tmp_path / "logs")
    (kwargs,) = runs
    assert (kwargs["group"], kwargs["job_type"]) == ("fusion 2026-11-29 12:03:11", "table")
    columns, data = table_data(rows)
    assert table.columns == columns == [
        "setting", "AP", "AP std", "AP50", "AP50 std", "AP75", "AP75 std", "n", "status",
        "default",
    ]  # fmt: skip
    assert table.data[0][:3] == ["fusion=add", 32.0, pytest.approx(2.0)]
    assert table.data[1][1] is None  # concat: missing
    (run_dir,) = (tmp_path / "logs" / "wandb").glob("offline-run-*")
    (logged,) = run_dir.glob("files/media/table/*.table.json")
    assert json.loads(logged.read_text())["columns"] == columns
