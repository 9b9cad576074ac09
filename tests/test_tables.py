"""pointins.tables: a multirun folder becomes the paper's table, rows in sweep order."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from pointins.tables import main, read_sweep, sweep_jobs, to_csv, to_markdown


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


def test_command_prints_markdown_and_writes_csv(compose_cfg, tmp_path, capsys):
    _fake_sweep(compose_cfg, tmp_path / "sweep", {"add": {"bbox/AP": 1.0, "bbox/AP50": 2.0}})
    main([str(tmp_path / "sweep"), "--csv", str(tmp_path / "t.csv")])
    assert "| fusion=add | 1.0 | 2.0 | — | ok |" in capsys.readouterr().out
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 5


def test_not_a_sweep_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="multirun.yaml"):
        read_sweep(tmp_path)
