"""`make clean` removes caches and never a run; `make clean-runs` removes the runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHES = [
    ".pytest_cache/v/cache/lastfailed",
    ".ruff_cache/0.1/entry",
    "__pycache__/train.cpython-311.pyc",
    "pointins/mask/__pycache__/losses.cpython-311.pyc",
    "lightning_logs/version_0/hparams.yaml",
    "wandb/run-1/files/config.yaml",
]
RUNS = [
    "outputs/train/2026-01-01/10-00-00/checkpoints/last.ckpt",
    "outputs/train/2026-01-01/10-00-00/hpc_ckpt_1.ckpt",
    "multirun/ablation_iz_inputs/2026-01-01/10-00-00/seed=1/checkpoints/last.ckpt",
    # a logger's folder inside a run is the run's, not a cache
    "outputs/train/2026-01-01/10-00-00/wandb/run-1/files/config.yaml",
]
KEPT = [
    "pointins/mask/losses.py",
    "data/shapes/annotations.json",
    ".venv/lib/python3.11/site-packages/torch/__pycache__/x.pyc",  # the environment's own
]


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A checkout with the Makefile and a file at every path above."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name in CACHES + RUNS + KEPT:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    return tmp_path


def make(target: str, folder: Path) -> None:
    subprocess.run(["make", "-s", target], cwd=folder, check=True, capture_output=True)


def test_clean_removes_caches_and_keeps_runs(checkout):
    make("clean", checkout)
    for name in CACHES:
        assert not (checkout / name).exists(), name
    assert not (checkout / "pointins/mask/__pycache__").exists()
    for name in RUNS + KEPT:
        assert (checkout / name).is_file(), name


def test_clean_runs_removes_outputs_and_multirun(checkout):
    make("clean-runs", checkout)
    assert not (checkout / "outputs").exists() and not (checkout / "multirun").exists()
    for name in CACHES + KEPT:
        assert (checkout / name).is_file(), name


def test_conda_environment_lists_what_the_venv_installs():
    """environment.yml (conda users) names every dependency of pyproject.toml, the extras
    the Makefile's venv installs included, with the same version bounds; torch and
    torchvision at the Makefile's pins."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    makefile = (ROOT / "Makefile").read_text()
    extras = makefile.split("-e '.[", 1)[1].split("]", 1)[0].split(",")
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    listed = {
        line.strip()[2:].split("#")[0].strip()
        for line in (ROOT / "environment.yml").read_text().splitlines()
        if line.strip().startswith("- ")
    }
    pins = makefile.split("TORCH_PINS ?=", 1)[1].splitlines()[0].split()
    wanted = [d for d in wanted if not d.startswith(("torch>", "torchvision>"))] + pins
    missing = [dep for dep in wanted if dep not in listed]
    assert not missing, f"environment.yml lacks {missing}"
