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


def test_each_resolution_is_logged_once(monkeypatch, caplog) -> None:
    monkeypatch.setattr(workers, "usable_cpus", lambda: 7)
    workers._announce.cache_clear()
    cfg = OmegaConf.create({"num_workers": "${spare_core_workers:3}"})
    with caplog.at_level("INFO", logger=workers.__name__):
        assert [cfg.num_workers for _ in range(3)] == [3, 3, 3]
    assert [r.getMessage() for r in caplog.records] == [
        "${spare_core_workers:3} resolved to 3 (7 CPUs)"
    ]
