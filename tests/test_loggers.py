"""pointins.engine.loggers: W&B runs online only with credentials, offline otherwise; a run
continued in its folder logs into the same W&B run; names, groups and tags say what a run is
(tests/test_wandb_runs.py reads what whole runs record)."""

from __future__ import annotations

import pytest
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from pointins.engine.loggers import (
    GROUP_FILE,
    RUN_ID_FILE,
    finish_runs,
    identity_kwargs,
    run_identity,
    store_group,
    training_run,
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


def _hydra(overrides, choices, multirun=False, sweep_dir="multirun/x/2026-11-29/12-03-11"):
    """The parts of Hydra's config that run_identity reads."""
    return {
        "mode": "RunMode.MULTIRUN" if multirun else "RunMode.RUN",
        "sweep": {"dir": sweep_dir},
        "runtime": {"choices": choices},
        "overrides": {"task": overrides},
        "job": {"config": {"override_dirname": {"exclude_keys": ["ablation", "experiment"]}}},
    }


CHOICES = {"experiment": "shapes", "detector": "fcos", "backbone": "r18", "data": "shapes"}
CFG = {"task_name": "train", "trainer": {"max_steps": -1, "fast_dev_run": False}}


def test_name_is_the_experiment_and_the_shortened_overrides():
    overrides = ["experiment=shapes", "model.mask.iz_parts=[io,offset]", "+seed=3"]
    overrides.append("hydra.run.dir=x")
    identity = run_identity(CFG, _hydra(overrides, CHOICES), job_type="train")
    assert identity.name == "shapes iz_parts=[io,offset] seed=3"
    assert identity.group == "shapes" and identity.job_type == "train"
    assert identity.tags == ("shapes", "fcos", "r18")  # dataset "shapes" not repeated
    plain = run_identity({"task_name": "train"}, None, job_type="train")
    assert plain.name == plain.group == "train" and plain.tags == ()
    evaluation = run_identity({"task_name": "eval"}, _hydra([], CHOICES), job_type="eval")
    assert evaluation.name == "eval shapes"


def test_a_sweep_launch_is_one_group_named_by_its_launch_time():
    choices = {**CHOICES, "ablation": "iz_inputs"}
    rows = [
        run_identity(CFG, _hydra(["ablation=iz_inputs", f"seed={s}"], choices, True), "train")
        for s in (1, 2)
    ]
    assert [r.group for r in rows] == ["iz_inputs 2026-11-29 12:03:11"] * 2
    assert [r.name for r in rows] == ["shapes seed=1", "shapes seed=2"]
    assert rows[0].tags[0] == "iz_inputs"
    later = _hydra(["seed=1"], choices, True, sweep_dir="multirun/x/2026-11-29/12-03-12")
    assert run_identity(CFG, later, "train").group == "iz_inputs 2026-11-29 12:03:12"


@pytest.mark.parametrize(
    "trainer",
    [{"max_steps": 2}, {"fast_dev_run": True}, {"limit_train_batches": 0.1}],
    ids=["max_steps", "fast_dev_run", "limit_train_batches"],
)
def test_a_shortened_run_is_tagged_smoke(trainer):
    assert "smoke" in run_identity({"trainer": trainer}, None, "train").tags
    full = {"max_steps": -1, "limit_train_batches": 1.0, "limit_val_batches": None}
    assert "smoke" not in run_identity({"trainer": full}, None, "train").tags


def test_a_configured_name_or_group_wins_over_the_computed_one():
    identity = run_identity(CFG, _hydra([], CHOICES), "train")
    kwargs = identity_kwargs(identity, {"name": None, "group": "mine", "tags": None})
    assert kwargs == {"name": "shapes", "tags": ["shapes", "fcos", "r18"], "job_type": "train"}


def test_a_checkpoint_names_its_training_run(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    first = wandb_run_id(tmp_path / "run", continues_run=False)
    store_group(tmp_path / "run", "iz_inputs 2026-11-29 12:03:11")
    assert (tmp_path / "run" / GROUP_FILE).is_file()
    source = training_run(ckpt)
    assert (source.dir, source.wandb_id) == (str(tmp_path / "run"), first)
    assert source.wandb_group == "iz_inputs 2026-11-29 12:03:11"
    assert training_run(tmp_path / "elsewhere.ckpt").wandb_id is None
