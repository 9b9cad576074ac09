"""The recipe's config for scripts that run outside ``train.py``'s Hydra entry point."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: Sequence[str] = (), experiment: str | None = "shapes") -> DictConfig:
    """``conf/train.yaml`` with ``experiment=<experiment>`` and ``overrides``, its
    ``hydra:`` interpolations resolvable (as in a ``train.py`` run)."""
    GlobalHydra.instance().clear()
    head = [f"experiment={experiment}"] if experiment else []
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*head, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg
