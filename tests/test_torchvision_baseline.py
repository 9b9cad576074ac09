"""The torchvision baseline: same data in, same evaluator out, labels and coordinates right."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from benchmarks.torchvision_baseline import (
    RESERVES_BACKGROUND,
    IdentityTransform,
    WallClockSchedule,
    autocast_for,
    build_model,
    build_optimizer,
    decay_fractions,
    evaluate,
    main,
    rescale_predictions,
    to_torchvision_images,
    to_torchvision_targets,
    train_for,
)
from datamodules.collate import Batch, pad_images

TINY = [
    "data.num_train=6",
    "data.num_val=2",
    "data.train_scales=[64]",
    "data.test_scale=64",
    "data.max_size=96",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.val_batch_size=2",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny generated shapes dataset shared by the module's tests."""
    return tmp_path_factory.mktemp("baseline_data")


def tiny_cfg(compose_cfg: Callable, data_dir: Path):
    return compose_cfg(["experiment=shapes", *TINY, f"paths.data_dir={data_dir}"])


def hand_batch() -> Batch:
    """Two images of different sizes, padded to 32, with boxes, labels and masks."""
    images = [torch.randn(3, 20, 30), torch.randn(3, 25, 18)]
    masks = [torch.zeros(2, 20, 30, dtype=torch.uint8), torch.zeros(1, 25, 18, dtype=torch.uint8)]
    masks[0][0, 2:8, 3:9] = 1
    masks[0][1, 10:20, 0:30] = 1
    masks[1][0, 5:25, 4:10] = 1
    targets = [
        {
            "boxes": torch.tensor([[3.0, 2, 9, 8], [0, 10, 30, 20]]),
            "labels": torch.tensor([0, 7]),
            "masks": masks[0],
        },
        {"boxes": torch.tensor([[4.0, 5, 10, 25]]), "labels": torch.tensor([2]), "masks": masks[1]},
    ]
    return Batch(
        images=pad_images(images, 32),
        image_sizes=[(20, 30), (25, 18)],
        orig_sizes=[(40, 60), (50, 36)],
        image_ids=[1, 2],
        targets=targets,
    )


@pytest.mark.parametrize("training", [True, False])
def test_identity_transform_leaves_images_and_targets_unchanged(training: bool) -> None:
    batch = hand_batch()
    images = to_torchvision_images(batch)
    assert [tuple(i.shape[-2:]) for i in images] == batch.image_sizes  # padding cropped off
    targets = to_torchvision_targets(batch, shift_labels=False, with_masks=True)
    transform = IdentityTransform().train(training)
    image_list, out = transform(images, targets)
    assert image_list.image_sizes == batch.image_sizes
    for i, (h, w) in enumerate(batch.image_sizes):
        assert torch.equal(image_list.tensors[i, :, :h, :w], images[i])  # no resize, no normalise
        for key in ("boxes", "labels", "masks"):
            assert torch.equal(out[i][key], batch.targets[i][key])
    detections = [{"boxes": torch.ones(1, 4)}]
    assert transform.postprocess(detections, [(20, 30)], [(40, 60)]) is detections


def test_labels_shift_for_maskrcnn_only_and_round_trip() -> None:
    assert RESERVES_BACKGROUND == {"fcos": False, "retinanet": False, "maskrcnn": True}
    batch = hand_batch()
    for shift in (False, True):
        targets = to_torchvision_targets(batch, shift_labels=shift)
        assert targets[0]["labels"].tolist() == [0 + shift, 7 + shift]
        assert "masks" not in targets[0]
        predictions = [
            {"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]}
            for t in targets
        ]
        back = rescale_predictions(predictions, batch.image_sizes, batch.image_sizes, shift)
        for b, t in zip(back, batch.targets, strict=True):
            assert torch.equal(b["labels"], t["labels"])


def test_rescale_predictions_to_original_size_by_hand() -> None:
    # input 100x200 (h, w) from an original 50x400: x scales by 2, y by 0.5
    pred = {
        "boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([3]),
        "masks": torch.ones(1, 1, 28, 28),  # Mask R-CNN's RoI probabilities
    }
    (out,) = rescale_predictions([pred], [(100, 200)], [(50, 400)], shift_labels=True)
    assert out["boxes"].tolist() == [[20.0, 10.0, 60.0, 20.0]]
    assert out["labels"].tolist() == [2] and out["scores"].tolist() == pytest.approx([0.9])
    assert out["masks"].shape == (1, 50, 400) and out["masks"].dtype == torch.bool
    # a full mask covers its box; torchvision's paste (legacy Detectron) adds <= 1 px around
    inside = torch.zeros(50, 400, dtype=torch.bool)
    inside[10:20, 20:60] = True
    near = torch.zeros(50, 400, dtype=torch.bool)
    near[9:21, 19:61] = True
    assert bool(out["masks"][0][inside].all()) and not bool(out["masks"][0][~near].any())
    (no_mask,) = rescale_predictions(
        [{k: v for k, v in pred.items() if k != "masks"}], [(100, 200)], [(50, 400)], False
    )
    assert "masks" not in no_mask and no_mask["labels"].tolist() == [3]


def test_rescale_predictions_equals_torchvision_postprocess() -> None:
    """What torchvision would output had it resized the image itself: boxes scaled, RoI
    masks pasted at the original resolution."""
    g = torch.Generator().manual_seed(0)
    pred = {
        "boxes": torch.tensor([[4.0, 6, 50, 30], [60, 1, 63.5, 40], [-5, 20, 30, 70]]),
        "scores": torch.rand(3, generator=g),
        "labels": torch.tensor([1, 4, 2]),
        "masks": torch.rand(3, 1, 28, 28, generator=g),
    }
    sizes, orig = [(64, 64)], [(128, 32)]
    reference = GeneralizedRCNNTransform(64, 128, [0.0] * 3, [1.0] * 3).eval()
    (expected,) = reference.postprocess([dict(pred)], sizes, orig)
    (out,) = rescale_predictions([pred], sizes, orig, shift_labels=True)
    assert torch.equal(out["boxes"], expected["boxes"])
    assert torch.equal(out["masks"], expected["masks"][:, 0] > 0.5)
    assert torch.equal(out["labels"], expected["labels"] - 1)


def test_wall_clock_schedule_warms_up_then_decays_at_budget_fractions(
    compose_cfg: Callable, data_dir: Path
) -> None:
    cfg = tiny_cfg(compose_cfg, data_dir)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    recipe = [m / optim["max_epochs"] for m in optim["scheduler"]["milestones"]]
    assert decay_fractions(optim) == pytest.approx(recipe)  # follows the recipe
    one_x = {"scheduler": {"unit": "epoch", "milestones": [8, 11]}, "max_epochs": 12}
    assert decay_fractions(one_x) == pytest.approx([8 / 12, 11 / 12])
    assert decay_fractions({"scheduler": {"unit": "step", "milestones": [5]}}) == [0.7, 0.9]
    s = WallClockSchedule(seconds=100, decay_at=(0.7, 0.9), warmup_steps=10, warmup_factor=0.001)
    assert s.factor(0, 0.0) == pytest.approx(0.001)
    assert s.factor(5, 1.0) == pytest.approx(0.5005)
    assert s.factor(10, 69.9) == 1.0
    assert s.factor(10, 70.0) == pytest.approx(0.1)
    assert s.factor(10, 95.0) == pytest.approx(0.01)


def test_models_follow_the_recipe(compose_cfg: Callable, data_dir: Path) -> None:
    cfg = tiny_cfg(compose_cfg, data_dir)
    width, convs = cfg.model.neck.out_channels, cfg.model.detector.num_convs
    fcos = build_model("fcos", cfg, num_classes=8)
    assert isinstance(fcos.transform, IdentityTransform)
    assert fcos.backbone.strides == [8, 16, 32, 64, 128] and fcos.backbone.out_channels == width
    assert fcos.head.classification_head.num_classes == 8
    assert len(fcos.head.classification_head.conv) == 3 * convs  # conv, GN, ReLU per layer
    assert fcos.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    retina = build_model("retinanet", cfg, num_classes=8)
    assert retina.head.classification_head.num_classes == 8
    assert len(retina.head.classification_head.conv) == convs
    # the recipe's tower normalisation (GroupNorm in experiment=shapes) is torchvision's too
    has_gn = any(isinstance(m, torch.nn.GroupNorm) for m in retina.head.modules())
    assert has_gn == bool(cfg.model.detector.group_norm)
    assert retina.anchor_generator.num_anchors_per_location() == [9] * 5
    octave = (32, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3))
    assert retina.anchor_generator.sizes[0] == pytest.approx(octave)
    mask_rcnn = build_model("maskrcnn", cfg, num_classes=8)
    assert mask_rcnn.roi_heads.box_predictor.cls_score.out_features == 9  # + background
    assert mask_rcnn.roi_heads.box_head.fc7.out_features == width
    assert mask_rcnn.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 9
    assert mask_rcnn.roi_heads.box_roi_pool.featmap_names == ["p3", "p4", "p5", "p6"]
    assert type(mask_rcnn.backbone.body) is type(instantiate(cfg.model.backbone))


@pytest.mark.parametrize("name", ["fcos", "retinanet", "maskrcnn"])
def test_one_step_then_evaluation_gives_the_metrics(
    name: str, compose_cfg: Callable, data_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(compose_cfg, data_dir)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    model = build_model(name, cfg, dm.num_classes)
    optimizer = build_optimizer(cfg, model)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    shift = RESERVES_BACKGROUND[name]
    stats = train_for(
        model,
        dm.train_dataloader(),
        optimizer,
        seconds=120,
        shift_labels=shift,
        with_masks=name == "maskrcnn",
        max_iterations=1,
    )
    assert stats.iterations == 1 and stats.images == 2 and math.isfinite(stats.last_loss)
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    metrics = evaluate(model, dm.val_dataloader(), dm.build_evaluator(tmp_path), shift)
    types = ("bbox", "segm") if name == "maskrcnn" else ("bbox",)
    assert {k.split("/")[0] for k in metrics} == set(types)
    assert all(f"{t}/{k}" in metrics for t in types for k in ("AP", "AP50", "AP75"))
    assert json.loads((tmp_path / "metrics.json").read_text()).keys() == metrics.keys()


def test_cli_writes_metrics_and_result_line(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = main(
        [
            "--model",
            "fcos",
            "--minutes",
            "1",
            "--max-iters",
            "2",
            "--log-every",
            "1",
            "--max-val-batches",
            "1",
            "--out",
            str(out),
            *TINY,
            f"paths.data_dir={data_dir}",
        ]
    )
    assert result["iterations"] == 2 and result["model"] == "torchvision-fcos"
    line = json.loads((out / "result.json").read_text())
    assert line.keys() == result.keys() and line["iterations"] == 2
    assert line["seconds"] > 0 and line["metrics"].keys() == result["metrics"].keys()
    assert "bbox/AP" in json.loads((out / "metrics.json").read_text())


def test_autocast_follows_trainer_precision() -> None:
    assert not torch.is_autocast_enabled("cpu")
    with autocast_for("bf16-mixed"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_enabled("cpu")
    with autocast_for("32-true"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="trainer.precision='16-mixed'"):
        autocast_for("16-mixed")
