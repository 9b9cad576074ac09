"""What W&B records of a training run, a sweep and an evaluation, read back from the
offline run files (``run-<id>.wandb``) with wandb's own record format: no network."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny import TINY_MODEL
from wandb.proto import wandb_internal_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]

# tests/tiny.py's TINY, made shorter still: one epoch of at most 2 steps
TINY = [
    "experiment=shapes",
    "data.num_train=4",
    "data.num_val=3",  # val image 2 has two instances of one class (the panel test)
    "callbacks.validation_images.num_images=3",
    "data.train_scales=[96]",
    "data.max_size=128",
    "data.test_scale=96",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "data.num_workers=0",
    *TINY_MODEL,
    "optim.scheduler.warmup_steps=2",
    "optim.max_epochs=1",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.max_steps=2",
    "callbacks.progress_bar.refresh_rate=0",
    "logger=wandb",
]


# ------------------------------------------------------------ the offline run file
_BLOCK = 32768  # wandb's record log: LevelDB's log format in 32 KiB blocks
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[pb.Record]:
    """The records of a ``run-<id>.wandb`` file: a 7-byte header (``:W&B``, magic,
    version), then chunks with a 7-byte header (crc32, length, type) that never cross a
    block boundary; a record too long for a block is split FIRST, MIDDLE..., LAST."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the block's end
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _values(items) -> dict:
    """``{key: value}`` of config or summary items (a key is ``key`` or ``nested_key``)."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


class OfflineRun:
    """One offline run folder (``<run dir>/wandb/offline-run-*``), as W&B will sync it."""

    def __init__(self, folder: Path) -> None:
        (file,) = folder.glob("run-*.wandb")
        records = read_records(file)
        kinds = [r.WhichOneof("record_type") for r in records]
        self.run = next(r.run for r, k in zip(records, kinds, strict=True) if k == "run")
        self.config: dict = {}  # the last value of each top-level key
        self.summary: dict = {}
        self.metrics: dict[str, pb.MetricRecord] = {}
        self.artifacts: list[pb.ArtifactRecord] = []
        for record, kind in zip(records, kinds, strict=True):
            if kind == "config":
                self.config.update(_values(record.config.update))
            elif kind == "summary":
                self.summary.update(_values(record.summary.update))
            elif kind == "metric":
                self.metrics[record.metric.name or record.metric.glob_name] = record.metric
            elif kind == "artifact":
                self.artifacts.append(record.artifact)

    @property
    def tags(self) -> list[str]:
        return list(self.run.tags)


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    return [OfflineRun(f) for f in sorted((run_dir / "wandb").glob("offline-run-*"))]


def launch(script: str, overrides: list[str], cwd: Path) -> None:
    """``python <script> <overrides>`` in ``cwd``, offline, without the caller's W&B
    settings (a stale WANDB_SERVICE would point the run at a finished W&B process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PROJECT_ROOT=str(cwd))
    cmd = [sys.executable, str(ROOT / script), *overrides]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}"


# -------------------------------------------------------------------- the runs
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny training run that logs its checkpoints: its run folder."""
    cwd = tmp_path_factory.mktemp("train")
    run_dir = cwd / "run"
    launch(
        "train.py",
        [*TINY, f"hydra.run.dir={run_dir}", "seed=7", "logger.wandb.log_model=true"],
        cwd,
    )
    return run_dir


def test_training_run_is_named_grouped_and_tagged(trained):
    (run,) = offline_runs(trained)
    assert run.run.display_name.startswith(
        "shapes num_train=4 num_val=3 num_images=3 train_scales=[96]"
    )
    assert "seed=7" in run.run.display_name and "logger" not in run.run.display_name
    assert run.run.run_group == "shapes" == (trained / "wandb_group").read_text().strip()
    assert run.run.job_type == "train"
    assert run.run.run_id == (trained / "wandb_run_id").read_text().strip()
    assert {"shapes", "fcos", "r18", "smoke"} <= set(run.tags)  # max_steps: a smoke run


def test_config_holds_the_resolved_config_once(trained):
    (run,) = offline_runs(trained)
    assert run.config["seed"] == 7 and run.config["data"]["test_scale"] == 96
    assert run.config["model"]["backbone"]["name"].startswith("resnet18")
    # the module's own hyperparameters are not logged beside it
    assert not {"backbone", "neck", "detector", "mask", "class_names"} & set(run.config)


def test_ap_summaries_are_the_best_value_and_final_values_are_logged(trained):
    (run,) = offline_runs(trained)
    for key in ("bbox/AP", "segm/AP", "segm/AP50"):
        assert run.metrics[key].summary.max and run.metrics[key].step_metric == (
            "trainer/global_step"
        )
        assert set(run.summary[key]) == {"max"}
    saved = json.loads((trained / "metrics.json").read_text())
    assert run.summary["final/segm/AP"] == pytest.approx(saved["segm/AP"])
    assert "final/train/loss" not in run.summary


def test_checkpoints_are_artifacts_of_the_offline_run(trained):
    (run,) = offline_runs(trained)
    models = [a for a in run.artifacts if a.type == "model"]  # tables are artifacts too
    saved = {json.loads(a.metadata)["original_filename"] for a in models}
    assert saved == {p.name for p in (trained / "checkpoints").glob("*.ckpt")}
    assert len(saved) == 2  # last and best: both checkpoint callbacks are scanned
    # W&B moves an alias to the newest version that names it: "best" ends on the best
    best = [json.loads(a.metadata) for a in models if "best" in a.aliases]
    assert best[-1]["original_filename"].startswith("best-epoch")
    for artifact in models:
        assert artifact.type == "model" and artifact.name == f"model-{run.run.run_id}"
        assert [c.path for c in artifact.manifest.contents] == ["model.ckpt"]


def test_per_class_table_and_instance_panel_are_logged(trained):
    """The W&B review of one run: a per-class AP table, and a validation panel whose
    ground-truth layer keeps every instance apart (same-class neighbours included)."""
    (folder,) = sorted((trained / "wandb").glob("offline-run-*"))
    (run,) = offline_runs(trained)
    assert run.summary["val/per_class_ap/_type"] == "table-file"
    (table_file,) = folder.glob("files/media/table/val/per_class_ap*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["class", "bbox AP", "segm AP", "instances"]
    assert len(table["data"]) == 8  # one row per class of the embedded data
    # the panel's images are the first val images; each GT instance is its own mask id
    val = json.loads((trained.parent / "data/shapes/annotations/instances_val.json").read_text())
    first = sorted(val["images"], key=lambda image: image["id"])[:3]
    classes = [
        [
            a["category_id"]
            for a in val["annotations"]
            if a["image_id"] == im["id"] and not a["iscrowd"]
        ]
        for im in first
    ]
    assert any(len(set(c)) < len(c) for c in classes)  # same-class neighbours to keep apart
    counts = [len(c) for c in classes]
    layers = [np.asarray(Image.open(p)) for p in folder.glob("files/media/images/mask/val/*.png")]
    ids_per_layer = sorted(len(set(np.unique(layer).tolist()) - {0}) for layer in layers)
    assert len(layers) == 2 * len(first)  # predictions and ground truth per image
    for count in counts:
        assert count in ids_per_layer, (counts, ids_per_layer)


def test_evaluation_joins_the_training_runs_group(trained, tmp_path):
    ckpt = trained / "checkpoints" / "last.ckpt"
    eval_dir = tmp_path / "eval"
    overrides = [o for o in TINY if not o.startswith(("trainer.max_steps", "optim."))]
    launch("eval.py", [*overrides, f"ckpt_path={ckpt}", f"hydra.run.dir={eval_dir}"], tmp_path)
    (run,) = offline_runs(eval_dir)
    (trained_run,) = offline_runs(trained)
    assert run.run.job_type == "eval" and run.run.run_group == trained_run.run.run_group
    assert run.run.display_name.startswith("eval shapes")
    assert run.config["ckpt_path"] == str(ckpt)
    assert run.config["train_run"]["wandb_id"] == trained_run.run.run_id
    assert run.config["data"]["test_scale"] == 96
    assert "final/segm/AP" in run.summary and set(run.summary["segm/AP"]) == {"max"}


@pytest.mark.slow  # 4 trainings: ~1 min on 2 cores
def test_each_sweep_launch_is_one_group(tmp_path):
    """Two launches of a 2-row sweep: one group per launch, named by the launch time."""
    for time in ("10-00-01", "10-00-02"):
        sweep = f"hydra.sweep.dir={tmp_path}/multirun/train/2026-11-29/{time}"
        rows = "hydra.sweep.subdir=${hydra.job.num}"  # the overrides make too long a name
        launch("train.py", ["-m", *TINY, sweep, rows, "seed=1,2"], tmp_path)
    groups = {}
    for run_dir in sorted((tmp_path / "multirun").glob("train/*/*/*/")):
        (run,) = offline_runs(run_dir)
        groups.setdefault(run.run.run_group, []).append(run.run.display_name.split()[-1])
    assert groups == {
        "train 2026-11-29 10:00:01": ["seed=1", "seed=2"],
        "train 2026-11-29 10:00:02": ["seed=1", "seed=2"],
    }


def test_a_sweep_of_two_rows_by_two_seeds_reviews_as_one_group(tmp_path):
    """The whole review of a sweep from its offline run files: a 2-row x 2-seed launch is
    one group of smoke-tagged training runs, an evaluation of one row joins it, and the
    sweep's table (seeds averaged) is logged into it as well."""
    sweep_dir = tmp_path / "multirun" / "train" / "2026-11-29" / "10-00-03"
    rows = "hydra.sweep.subdir=${hydra.job.num}"
    launch(
        "train.py",
        ["-m", *TINY, f"hydra.sweep.dir={sweep_dir}", rows,
         "model.mask.sampling.num_samples=8,16", "seed=1,2"],
        tmp_path,
    )  # fmt: skip
    group = "train 2026-11-29 10:00:03"
    runs = [offline_runs(job)[0] for job in sorted(sweep_dir.glob("[0-9]*"))]
    assert len(runs) == 4 and {r.run.run_group for r in runs} == {group}
    for run in runs:
        assert "smoke" in run.tags and run.run.job_type == "train"
        assert set(run.summary["segm/AP"]) == {"max"}
    names = sorted(" ".join(r.run.display_name.split()[-2:]) for r in runs)
    assert names == sorted(f"num_samples={n} seed={s}" for n in (8, 16) for s in (1, 2))

    ckpt = sweep_dir / "0" / "checkpoints" / "last.ckpt"
    overrides = [o for o in TINY if not o.startswith(("trainer.max_steps", "optim."))]
    eval_dir = tmp_path / "eval"
    launch("eval.py", [*overrides, f"ckpt_path={ckpt}", f"hydra.run.dir={eval_dir}"], tmp_path)
    (evaluation,) = offline_runs(eval_dir)
    assert evaluation.run.job_type == "eval" and evaluation.run.run_group == group

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "pointins.tables", str(sweep_dir), "--wandb"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (table_run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    table_run = OfflineRun(table_run_dir)
    assert table_run.run.job_type == "table" and table_run.run.run_group == group
    (table_file,) = table_run_dir.glob("files/media/table/table*.table.json")
    table = json.loads(table_file.read_text())
    n = table["columns"].index("n")
    assert len(table["data"]) == 2 and [row[n] for row in table["data"]] == [2, 2]
