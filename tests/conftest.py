from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides, config_name='train') -> DictConfig, with paths resolvable."""

    def _compose(overrides: list[str] | None = None, config_name: str = "train"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF), version_base="1.3"):
            return compose(config_name, overrides=overrides or [], return_hydra_config=True)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="package")
def tiny_checkpoint(tmp_path_factory):
    """tiny_checkpoint(detector="fcos", *overrides) -> (checkpoint, data dir): the TINY
    recipe (tests/tiny.py) trained once per test run, detector and overrides, with score
    threshold 0 so that the barely trained model still detects (its 100 best per image)."""
    from tiny import train_tiny

    root = tmp_path_factory.mktemp("tiny")
    trained: dict[tuple[str, ...], Path] = {}

    def _get(detector: str = "fcos", *overrides: str) -> tuple[Path, Path]:
        key = (detector, *overrides)
        if key not in trained:
            extra = [f"detector={detector}", "model.detector.postprocess.score_thresh=0.0"]
            out = root / "-".join(key).replace("=", "_")
            trained[key] = train_tiny(out, root / "data", [*extra, *overrides])
        return trained[key], root / "data"

    return _get
