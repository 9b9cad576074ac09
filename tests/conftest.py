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
