"""``${spare_core_workers:N}``: loader processes only where the machine has cores to spare."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from pointins.engine import workers


@pytest.mark.parametrize(("cpus", "expected"), [(1, 0), (2, 0), (3, 2), (16, 2)])
def test_two_cpus_or_fewer_load_in_the_main_process(monkeypatch, cpus, expected) -> None:
    monkeypatch.setattr(workers, "usable_cpus", lambda: cpus)
    cfg = OmegaConf.create({"num_workers": "${spare_core_workers:2}"})
    assert cfg.num_workers == expected and isinstance(cfg.num_workers, int)


def test_the_demo_recipe_asks_for_it(compose_cfg) -> None:
    cfg = compose_cfg(["experiment=shapes"])
    assert OmegaConf.to_container(cfg.data)["num_workers"] == "${spare_core_workers:2}"
    assert cfg.data.num_workers == workers.spare_core_workers(2)
