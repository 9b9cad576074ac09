from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# folders that libraries write under the home folder, relative to the tests' own home
HOME_FOLDERS = {
    "XDG_CACHE_HOME": ".cache",
    "XDG_CONFIG_HOME": ".config",
    "XDG_DATA_HOME": ".local/share",
    "WANDB_DIR": "wandb",
    "WANDB_CACHE_DIR": ".cache/wandb",
    "WANDB_CONFIG_DIR": ".config/wandb",
    "WANDB_DATA_DIR": ".local/share/wandb",  # artifact staging
    "WANDB_ARTIFACT_DIR": "artifacts",
    "TORCH_HOME": ".cache/torch",
    "HF_HOME": ".cache/huggingface",
    "TORCHINDUCTOR_CACHE_DIR": ".cache/torchinductor",
    "TRITON_CACHE_DIR": ".cache/triton",
    "MPLCONFIGDIR": ".config/matplotlib",
}


@pytest.hookimpl(trylast=True)  # after pytest's tmp_path factory is configured
def pytest_configure(config: pytest.Config) -> None:
    """The whole suite, subprocesses included, sees a home folder under pytest's tmp, set
    before collection (importing onnxruntime or wandb may already write there): W&B runs and
    artifact staging, caches of torch, timm/Hugging Face, inductor and onnxruntime land
    there and nothing is read from the user's (no cached weights, no W&B login)."""
    home = config._tmp_path_factory.mktemp("home")
    os.environ["HOME"] = str(home)
    for var, folder in HOME_FOLDERS.items():
        (home / folder).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(home / folder)
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "HF_HUB_CACHE"):
        os.environ.pop(var, None)
    if hasattr(config, "workerinput"):  # a pytest-xdist worker (make test: one per core)
        # One OpenMP thread per worker and per subprocess it starts: workers that each spun
        # a thread per core would wait on each other's cores.
        # Set before any test module imports torch, which reads them once.
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def restore_hydra_state():
    """Hydra's global state as each test found it (tests set HydraConfig as train.py's
    caller would, and compose configs)."""
    saved = HydraConfig.instance().cfg
    yield
    HydraConfig.instance().cfg = saved
    GlobalHydra.instance().clear()


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
