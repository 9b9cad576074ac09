"""pointins.loggers: W&B runs online only with credentials, offline otherwise; a run
continued in its folder logs into the same W&B run."""

from __future__ import annotations

import pytest
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from pointins.loggers import (
    RUN_ID_FILE,
    finish_runs,
    wandb_logged_in,
    wandb_logger,
    wandb_run_id,
)


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def test_login_is_read_from_netrc_or_env(no_credentials, monkeypatch):
    assert not wandb_logged_in()
    no_credentials.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    no_credentials.chmod(0o600)
    assert wandb_logged_in()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert not wandb_logged_in()
    monkeypatch.delenv("WANDB_MODE")
    no_credentials.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_logged_in()


def test_auto_is_offline_without_login(no_credentials, tmp_path):
    logger = wandb_logger(offline="auto", project="p", save_dir=str(tmp_path), name="")
    assert logger._offline and logger._wandb_init["name"] is None


def test_bad_offline_value_names_the_option():
    with pytest.raises(ValueError, match="logger.wandb.offline"):
        wandb_logger(offline="sometimes")


def test_each_job_of_a_multirun_writes_its_own_offline_run(no_credentials, tmp_path):
    # jobs of a multirun share one process: without finishing, job 2 logs into job 1's run
    for job in ("job0", "job1"):
        logger = wandb_logger(offline="auto", project="p", save_dir=str(tmp_path / job))
        logger.log_metrics({"segm/AP": 1.0})
        finish_runs([logger])
    for job in ("job0", "job1"):
        assert len(list((tmp_path / job / "wandb").glob("offline-run-*"))) == 1, job


def test_a_continued_run_keeps_its_wandb_id_and_a_fresh_one_draws_a_new_id(tmp_path):
    first = wandb_run_id(tmp_path, continues_run=False)
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == first
    assert wandb_run_id(tmp_path, continues_run=True) == first
    fresh = wandb_run_id(tmp_path, continues_run=False)
    assert fresh != first and (tmp_path / RUN_ID_FILE).read_text().strip() == fresh
    assert wandb_run_id(tmp_path / "new", continues_run=True) is not None  # nothing stored yet


def test_only_rank_zero_touches_the_id_file(tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert wandb_run_id(tmp_path, continues_run=False) is None
    assert not (tmp_path / RUN_ID_FILE).exists()


def test_two_processes_with_one_id_write_one_offline_run(no_credentials, tmp_path):
    """What a run killed and rerun in its folder leaves: two offline parts, one run id
    (``wandb sync <run dir>/wandb/offline-run-*`` uploads them into one run)."""
    for value in (1.0, 2.0):
        logger = wandb_logger(
            offline="auto", project="p", save_dir=str(tmp_path), id="abcd1234", resume="allow"
        )
        logger.log_metrics({"segm/AP": value})
        finish_runs([logger])
    parts = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(parts) == 2
    assert all([f.name for f in p.glob("run-*.wandb")] == ["run-abcd1234.wandb"] for p in parts)
