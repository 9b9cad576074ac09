"""The package is laid out by job and imports one way: entry points → inference → engine →
models → their parts → core structures; the public API keeps its names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pointins"

# layer of each module or subpackage: a module imports only from its own layer or below
LAYERS = {
    "structures": 0, "box_ops": 0, "sync_free": 0, "preprocess": 0,
    "backbones": 1, "necks": 1, "detectors": 1, "mask": 1, "evaluation": 1,
    "model": 2, "baselines": 2,
    "engine": 3,
    "inference": 4,
    "export": 5, "tables": 5, "__init__": 5,
}  # fmt: skip


def _layer(module: str) -> int:
    """``pointins.engine.runner`` -> the layer of ``engine``."""
    return LAYERS[module.split(".")[1]] if "." in module else LAYERS["__init__"]


def _imports(path: Path) -> set[str]:
    """The ``pointins.*`` modules a file imports, at any depth of the file (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pointins":
                found |= {f"pointins.{alias.name}" for alias in node.names}
            elif node.module.startswith("pointins."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pointins.")}
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_imports_go_one_way(path: Path) -> None:
    name = _module_name(path)
    own = _layer(name)
    upward = [m for m in _imports(path) if _layer(m) > own]
    assert not upward, f"{name} (layer {own}) imports {upward} from a layer above"


def test_every_top_level_name_has_a_layer() -> None:
    names = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.parent.name for p in PACKAGE.glob("*/__init__.py")
    }
    assert names == set(LAYERS), names ^ set(LAYERS)


def test_public_api_and_commands_keep_their_names() -> None:
    code = (
        "from pointins import Prediction, Predictor, Preprocess, draw\n"
        "from pointins.export import OnnxPredictor, export_onnx, main\n"
        "from pointins.tables import main as tables_main\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    for command in ("pointins.export", "pointins.tables"):
        out = subprocess.run(
            [sys.executable, "-m", command, "--help"], cwd=ROOT, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip(), f"python -m {command} --help printed nothing"
