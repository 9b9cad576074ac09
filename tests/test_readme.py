"""Every ``python train.py …`` / ``python eval.py …`` command the README shows composes with
Hydra as printed, so the guide cannot drift from the configs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
ENTRY = re.compile(r"python (train|eval)\.py\b([^`\n]*)")


def readme_commands(text: str) -> list[tuple[str, str]]:
    """(entry point, arguments) of every command in the README, in code blocks or inline
    code; backslash continuations joined, comments dropped."""
    commands = []
    for match in ENTRY.finditer(text.replace("\\\n", " ")):
        args = re.split(r"\s#", " " + match.group(2), maxsplit=1)[0]  # a trailing comment
        commands.append((match.group(1), args.strip()))
    return commands


def overrides_of(args: str) -> list[str]:
    """Hydra overrides of a command line as a user would type it: options (``-m``,
    ``--cfg job``) dropped, ``[optional]`` parts kept, ``<placeholders>`` filled in, and a
    multirun's comma-separated values composed as their first value."""
    args = re.sub(r"<[^<>\s]+>", "X", args)
    args = re.sub(r"(?:(?<=\s)|^)\[([^\[\]]*)\]", r"\1", args)  # [optional] -> optional
    tokens, skip_next = [], False
    for token in shlex.split(args):
        if skip_next:
            skip_next = False
            continue
        if token in ("--cfg", "-c", "--package", "-p"):
            skip_next = True
            continue
        if token.startswith("-"):
            continue
        key, _, value = token.partition("=")
        if "," in value and not value.startswith(("[", "{")):
            value = value.split(",")[0]
        tokens.append(f"{key}={value}")
    return tokens


COMMANDS = readme_commands((ROOT / "README.md").read_text())


def test_the_readme_has_commands_to_check():
    entries = {entry for entry, _ in COMMANDS}
    assert entries == {"train", "eval"} and len(COMMANDS) >= 15


def test_placeholders_and_options_are_understood():
    assert overrides_of("-m ablation=iz_inputs seed=1,2,3 --cfg job") == [
        "ablation=iz_inputs",
        "seed=1",
    ]
    assert overrides_of("ckpt_path=<run>/last.ckpt [experiment=shapes]") == [
        "ckpt_path=X/last.ckpt",
        "experiment=shapes",
    ]
    assert overrides_of("model.mask.iz_parts=[io,offset]") == ["model.mask.iz_parts=[io,offset]"]
    assert readme_commands("`python train.py a=1 \\\n  b=2  # note`") == [("train", "a=1    b=2")]


@pytest.mark.parametrize(("entry", "args"), COMMANDS, ids=[f"{e}.py {a}" for e, a in COMMANDS])
def test_readme_command_composes(compose_cfg, entry, args):
    overrides = overrides_of(args)
    cfg = compose_cfg(overrides, config_name=entry)
    OmegaConf.to_container(cfg.model, resolve=True)  # every interpolation in the model resolves


def _section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n#", 1)[0]


def test_the_python_example_and_the_export_command_run_as_written(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """The README's Predictor example and ONNX command, run verbatim in a folder holding a
    trained checkpoint and a val image where the README says they are."""
    pytest.importorskip("onnxruntime")
    text = (ROOT / "README.md").read_text()
    code = _section(text, "### From Python").split("```python\n", 1)[1].split("```", 1)[0]
    export = re.search(r"^python -m pointins\.export (.+)$", _section(text, "### ONNX"), re.M)
    ckpt, data = tiny_checkpoint("fcos")
    image = re.search(r'"(data/shapes/images/val/[^"]+)"', code).group(1)
    (tmp_path / image).parent.mkdir(parents=True)
    (tmp_path / image).write_bytes(sorted((data / "shapes/images/val").iterdir())[0].read_bytes())
    (tmp_path / "outputs/demo/checkpoints").mkdir(parents=True)
    (tmp_path / "outputs/demo/checkpoints/last.ckpt").symlink_to(ckpt)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "prediction.png").is_file()

    from pointins.export import OnnxPredictor, main

    out = main(shlex.split(export.group(1).split("#")[0]))
    assert out == Path("pointins.onnx") and len(OnnxPredictor(out)(image)) > 0
