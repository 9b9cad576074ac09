"""End-to-end training: runs, writes its run directory, resumes exactly, stops on NaN and
before training on an empty training set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from pycocotools import mask as mask_utils
from tiny import TINY

import eval as eval_entry
import train as train_entry
from datamodules.synthetic import CATEGORIES, generate_shapes


@pytest.fixture
def run(compose_cfg, tmp_path):
    """run(name, extra_overrides) -> (cfg, metrics, output_dir)."""

    def _run(name: str, extra: list[str] | None = None):
        out = tmp_path / name
        cfg = compose_cfg([*TINY, f"paths.data_dir={tmp_path / 'data'}", *(extra or [])])
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
            del cfg.hydra
        metrics = train_entry.train(cfg)
        return cfg, metrics, out

    return _run


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_run_directory_has_metrics_and_checkpoints(run):
    _, metrics, out = run("plain")
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("bbox/AP", "bbox/AP50", "segm/AP", "segm/APl"):
        assert key in saved and key in metrics
    assert metrics["data/instances_dropped"] >= 0  # what the augmentation removed, per epoch
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "bbox.json").is_file() and (out / "segm.json").is_file()


def test_run_stopped_between_evaluations_scores_its_final_weights(run):
    # a sweep row stopped by trainer.max_steps before the scheduled evaluation must still
    # leave a metrics.json (the table command reads it)
    _, metrics, out = run("max_steps", ["trainer.max_steps=2", "trainer.check_val_every_n_epoch=5"])
    assert "segm/AP" in metrics
    assert "segm/AP" in json.loads((out / "metrics.json").read_text())


def test_eval_reproduces_the_final_validation(run, compose_cfg, tmp_path):
    # score threshold 0: even a barely trained model then predicts, so there is a lot to compare
    _, metrics, out = run("trained", ["model.detector.postprocess.score_thresh=0.0"])
    assert json.loads((out / "segm.json").read_text()), "no predictions to compare"
    cfg = compose_cfg(
        [
            *[o for o in TINY if o.split("=")[0].split(".")[0] in ("experiment", "data")],
            f"paths.data_dir={tmp_path / 'data'}",
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
        ],
        config_name="eval",
    )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
        del cfg.hydra
    evaluated = eval_entry.evaluate(cfg)
    for key in ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"):
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-9, nan_ok=True)
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_checkpoint_of_other_classes_is_a_clear_error(run, tmp_path):
    _, _, out = run("trained")
    with pytest.raises(ValueError, match="trained on 8 classes"):
        eval_entry.load_checkpoint(str(out / "checkpoints" / "last.ckpt"), ["a", "b"])


def test_resume_from_last_ckpt_reaches_the_same_weights(run):
    _, _, full = run("full")
    _, _, half = run("half", ["trainer.max_epochs=1"])
    _, _, resumed = run("resumed", [f"ckpt_path={half / 'checkpoints' / 'last.ckpt'}"])
    a = _weights(full / "checkpoints" / "last.ckpt")
    b = _weights(resumed / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_nan_loss_stops_with_step_and_terms(run):
    with pytest.raises(FloatingPointError, match=r"step [1-9]\d* .*loss_cls=.*loss_mask="):
        run("nan", ["optim.optimizer.lr=1e30", "optim.scheduler.warmup_steps=0"])


def test_predict_folder_writes_pictures_and_coco_results(run, compose_cfg, tmp_path, caplog):
    _, _, out = run("trained", ["model.detector.postprocess.score_thresh=0.0"])
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    val_images = sorted((tmp_path / "data" / "shapes" / "images" / "val").iterdir())
    for i, src in enumerate(val_images[:2]):
        (folder / f"{i}{src.suffix}").write_bytes(src.read_bytes())
    (folder / "2_broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image, not listed")
    cfg = compose_cfg(
        [
            *[o for o in TINY if o.split("=")[0].split(".")[0] in ("experiment", "data")],
            f"paths.data_dir={tmp_path / 'data'}",
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
            f"predict.input={folder}",
        ],
        config_name="eval",
    )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "predict")
        del cfg.hydra
    with caplog.at_level("WARNING"):
        results_file = eval_entry.predict(cfg)
    assert "2_broken.jpg" in caplog.text  # unreadable file named, then skipped
    pictures = sorted(p.name for p in (tmp_path / "predict" / "predictions").iterdir())
    assert pictures == ["0.png", "1.png"]
    results = json.loads(results_file.read_text())
    assert results, "score threshold 0 must give detections"
    for r in results:
        assert r["image_id"] in (0, 1) and r["file_name"] == f"{r['image_id']}.jpg"
        assert r["category_id"] in {c["id"] for c in CATEGORIES}  # dataset ids, not labels
        height, width = mask_utils.decode(r["segmentation"]).shape
        x, y, w, h = r["bbox"]
        assert 0 <= x <= x + w <= width + 1e-3 and 0 <= y <= y + h <= height + 1e-3


def test_cpu_recipe_trains_on_any_coco_folder(compose_cfg, tmp_path):
    """experiment=shapes data=coco data.root=DIR: the small model on a user's COCO files."""
    root = generate_shapes(tmp_path / "mine", num_train=8, num_val=2, seed=3)
    overrides = [o for o in TINY if not o.startswith(("data.num_train", "data.num_val"))]
    cfg = compose_cfg(
        [
            *overrides,
            "data=coco",
            f"data.root={root}",
            "data.train_ann=annotations/instances_train.json",
            "data.train_img_dir=images/train",
            "data.val_ann=annotations/instances_val.json",
            "data.val_img_dir=images/val",
            "optim.max_epochs=1",
        ]
    )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        del cfg.hydra
    metrics = train_entry.train(cfg)
    assert "segm/AP" in metrics and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["category_ids"] == [c["id"] for c in CATEGORIES]


def test_learning_rate_follows_the_total_batch(run, caplog):
    """A recipe written for batch 8, run at 1 device x 2 images: lr x 1/4, warm-up x 4, and
    a warning that the 2-epoch run never reaches the recipe's decays."""
    with caplog.at_level("INFO", logger="pointins.engine.lit_module"):
        _, _, out = run("scaled", ["optim.reference_batch=8", "optim.scheduler.warmup_steps=3"])
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(2.5e-4)
    scheduler = saved["lr_schedulers"][0]
    assert scheduler["base_lrs"] == [pytest.approx(2.5e-4)]
    hparams = (out / "csv").rglob("hparams.yaml")
    text = "".join(p.read_text() for p in hparams)
    assert "optim/lr: 0.00025" in text and "optim/warmup_steps: 12" in text
    assert any("lr 0.001 -> 0.00025, warm-up 3 -> 12 steps" in r.message for r in caplog.records)
    late = [r for r in caplog.records if r.levelname == "WARNING" and "milestones" in r.message]
    assert late and "[7.2, 8.2]" in late[0].message  # the demo FCOS budget's epochs


def test_auto_scale_lr_off_keeps_the_configured_rate(run):
    _, _, out = run("fixed", ["optim.reference_batch=8", "optim.auto_scale_lr=false"])
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(1e-3)


def test_a_training_set_left_empty_stops_before_training(compose_cfg, tmp_path):
    """Every training image only crowd-annotated or unannotated: zero steps to train, so
    the run stops with the file and the counts instead of exiting as if it had trained."""
    from test_coco_datamodule import coco_dict, write_dataset

    from datamodules.coco import DatasetError

    data = coco_dict()
    write_dataset(tmp_path / "mine", data, "val.json")
    data["images"] = [img for img in data["images"] if img["id"] in (4, 5)]  # crowd / nothing
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in (4, 5)]
    write_dataset(tmp_path / "mine", data, "train.json")
    overrides = [o for o in TINY if not o.startswith(("data.num_train", "data.num_val"))]
    cfg = compose_cfg(
        [
            *overrides,
            "data=coco",
            f"data.root={tmp_path / 'mine'}",
            "data.train_ann=train.json",
            "data.train_img_dir=img",
            "data.val_ann=val.json",
            "data.val_img_dir=img",
        ]
    )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        del cfg.hydra
    train_file = tmp_path / "mine" / "train.json"
    expected = f"{train_file}: no training images: 2 listed, 2 dropped as empty .*, 0 left"
    with pytest.raises(DatasetError, match=expected) as error:
        train_entry.train(cfg)
    assert "data.train_keep_empty=true" in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_cityscapes_split_left_empty_names_the_folder(tmp_path):
    from test_cityscapes_datamodule import datamodule, id_map_a, id_map_empty, write_image

    from datamodules.coco import DatasetError

    root = tmp_path / "cityscapes"
    write_image(root, "train", "aachen", 1, id_map_empty())
    write_image(root, "val", "lindau", 1, id_map_a())
    with pytest.raises(DatasetError, match=r"gtFine/train: .* 1 listed, 1 dropped .* 0 left"):
        datamodule(root).setup("fit")
