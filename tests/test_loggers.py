"""pointins.loggers: W&B runs online only with credentials, offline otherwise."""

from __future__ import annotations

import pytest

from pointins.loggers import finish_runs, wandb_logged_in, wandb_logger


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
