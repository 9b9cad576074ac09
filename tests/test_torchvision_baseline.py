"""The torchvision baselines: same data in, same evaluator out, labels and coordinates
right, and trained by the same Trainer, module code and schedule as PointINS."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.callbacks import timer as timer_module
from tiny import TINY_DATA, TINY_TRAINER
from torchvision.models.detection.transform import GeneralizedRCNNTransform

import train as train_entry
from pointins.baselines import (
    BASELINES,
    RESERVES_BACKGROUND,
    IdentityTransform,
    TorchvisionDetector,
    build_torchvision,
    convert_targets,
    rescale_predictions,
    unpad,
)
from pointins.engine.baseline_module import TorchvisionModule
from pointins.engine.lit_module import DetectionModule, PointINSModule
from pointins.engine.loading import module_class
from pointins.engine.runner import build_datamodule, build_trainer
from pointins.structures import Batch, pad_images

# A model small enough to train a few steps on CPU in seconds; the recipe's width of 64
# (GroupNorm(32) needs 2 channels per group at P7's 1×1 of these small images).
TINY = [*TINY_DATA, "model.detector.head.num_convs=1", *TINY_TRAINER]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny generated shapes dataset shared by the module's tests."""
    return tmp_path_factory.mktemp("baseline_data")


def tiny_cfg(compose_cfg: Callable, data_dir: Path, extra: list[str] | None = None):
    return compose_cfg([*TINY, f"paths.data_dir={data_dir}", *(extra or [])])


def model_parts(cfg) -> dict:
    return OmegaConf.to_container(cfg.model, resolve=True)


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
    images = unpad(batch.images, batch.image_sizes)
    assert [tuple(i.shape[-2:]) for i in images] == batch.image_sizes  # padding cropped off
    targets = convert_targets(batch.targets, shift_labels=False, with_masks=True)
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
        targets = convert_targets(batch.targets, shift_labels=shift)
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


def test_models_follow_the_recipe(compose_cfg: Callable, data_dir: Path) -> None:
    cfg = tiny_cfg(compose_cfg, data_dir)
    parts = model_parts(cfg)
    width, convs = cfg.model.neck.out_channels, cfg.model.detector.head.num_convs

    def build(name: str):
        return build_torchvision(name, parts["backbone"], parts["neck"], parts["detector"], 8)

    fcos = build("fcos")
    assert isinstance(fcos.transform, IdentityTransform)
    assert fcos.backbone.strides == [8, 16, 32, 64, 128] and fcos.backbone.out_channels == width
    assert fcos.head.classification_head.num_classes == 8
    assert len(fcos.head.classification_head.conv) == 3 * convs  # conv, GN, ReLU per layer
    assert fcos.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    prior = cfg.model.detector.head.prior_prob
    bias = fcos.head.classification_head.cls_logits.bias
    assert torch.sigmoid(bias).tolist() == pytest.approx([prior] * 8)
    post = cfg.model.detector.postprocess
    assert (fcos.score_thresh, fcos.nms_thresh) == (post.score_thresh, post.nms_thresh)
    assert (fcos.detections_per_img, fcos.topk_candidates) == (
        post.detections_per_img,
        post.topk_candidates,
    )
    retina = build("retinanet")
    assert retina.head.classification_head.num_classes == 8
    assert len(retina.head.classification_head.conv) == convs
    # the recipe's tower normalisation (GroupNorm in experiment=shapes) is torchvision's too
    has_gn = any(isinstance(m, torch.nn.GroupNorm) for m in retina.head.modules())
    assert has_gn == bool(cfg.model.detector.head.group_norm)
    # torchvision's v2 model trains its GroupNorm head with GIoU, v1's plain head with L1
    assert retina.head.regression_head._loss_type == ("giou" if has_gn else "l1")
    plain = {**parts["detector"], "head": {**parts["detector"]["head"], "group_norm": False}}
    v1 = build_torchvision("retinanet", parts["backbone"], parts["neck"], plain, 8)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in v1.head.modules())
    assert v1.head.regression_head._loss_type == "l1"
    assert retina.anchor_generator.num_anchors_per_location() == [9] * 5
    octave = (32, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3))
    assert retina.anchor_generator.sizes[0] == pytest.approx(octave)
    mask_rcnn = build("maskrcnn")
    assert mask_rcnn.roi_heads.box_predictor.cls_score.out_features == 9  # + background
    assert mask_rcnn.roi_heads.box_head.fc7.out_features == 1024  # torchvision's
    assert mask_rcnn.roi_heads.box_head.fc6.in_features == width * 7 * 7
    assert mask_rcnn.roi_heads.mask_head[0][0].out_channels == width
    assert mask_rcnn.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 9
    assert mask_rcnn.roi_heads.score_thresh == post.score_thresh
    assert type(mask_rcnn.backbone.body) is type(instantiate(cfg.model.backbone))
    with pytest.raises(ValueError, match="baseline='yolo'"):
        build("yolo")


def test_maskrcnn_reads_the_levels_torchvision_reads(compose_cfg: Callable, data_dir: Path) -> None:
    """torchvision's Mask R-CNN layout: RPN anchors 32..512 on P2..P6 (one size per level),
    boxes and masks RoI-aligned over P2..P5 with the level mapper's k0 = 4 at 224 px."""
    parts = model_parts(tiny_cfg(compose_cfg, data_dir))
    net = build_torchvision("maskrcnn", parts["backbone"], parts["neck"], parts["detector"], 8)
    features = net.backbone(torch.zeros(1, 3, 128, 192))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    strides = [128 // f.shape[-2] for f in features.values()]
    assert strides == [4, 8, 16, 32, 64]  # P2..P6
    assert net.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert net.rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    for pool, size in ((net.roi_heads.box_roi_pool, 7), (net.roi_heads.mask_roi_pool, 14)):
        assert pool.featmap_names == ["0", "1", "2", "3"]  # P2..P5, not the RPN's P6
        assert pool.output_size == (size, size) and pool.sampling_ratio == 2
    # the level mapper, set up on the first call: scales of P2..P5, k0 = 4 at 224 px
    net.eval()
    with torch.no_grad():
        net([torch.zeros(3, 128, 192)])
    pool = net.roi_heads.box_roi_pool
    assert pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    mapper = pool.map_levels
    assert (mapper.k_min, mapper.k_max, mapper.lvl0, mapper.s0) == (2, 5, 4, 224)
    boxes = torch.tensor([[0.0, 0, 56, 56], [0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 900, 900]])
    assert mapper([boxes]).tolist() == [0, 1, 2, 3]  # P2, P3, P4, P5


def test_dense_baselines_read_p3_to_p7(compose_cfg: Callable, data_dir: Path) -> None:
    """torchvision's FCOS and RetinaNet on the recipe's P3..P7 (strides 8..128)."""
    parts = model_parts(tiny_cfg(compose_cfg, data_dir))
    for name in ("fcos", "retinanet"):
        net = build_torchvision(name, parts["backbone"], parts["neck"], parts["detector"], 8)
        features = net.backbone(torch.zeros(1, 3, 256, 256))
        assert [256 // f.shape[-1] for f in features.values()] == [8, 16, 32, 64, 128]
        assert len(net.anchor_generator.sizes) == 5


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_option_selects_the_module_and_its_monitor(compose_cfg, name: str) -> None:
    cfg = compose_cfg(["experiment=shapes", f"baseline={name}"])
    assert cfg.model._target_ == "pointins.engine.baseline_module.TorchvisionModule"
    assert cfg.model.baseline == name and cfg.model.mask is None
    assert cfg.monitor == ("segm/AP" if name == "maskrcnn" else "bbox/AP")
    choices = cfg.hydra.runtime.choices
    assert choices.detector == {"fcos": "fcos", "retinanet": "retinanet"}.get(name, "fcos")
    # the shapes recipe's towers, optimiser and precision, as PointINS gets them
    pointins = compose_cfg(["experiment=shapes"])
    assert cfg.model.detector.head.conv_dim == pointins.model.detector.head.conv_dim == 64
    assert cfg.optim.optimizer == pointins.optim.optimizer
    assert cfg.trainer.precision == pointins.trainer.precision
    assert cfg.trainer.max_time is None


def test_unknown_baseline_is_a_clear_error(compose_cfg) -> None:
    with pytest.raises(HydraException, match="baseline"):
        compose_cfg(["baseline=yolo"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("mask=pointins_small", r"baseline=fcos with a PointINS mask module \(model.mask"),
        ("model.det_weight=2", "model.det_weight=2"),
        ("model.compile=true", "model.compile=true"),
        ("model.detector.head.checkpoint_towers=true", "model.detector.head.checkpoint_towers"),
        ("model.detector.head.conv_dim=32", "model.detector.head.conv_dim=32 differs"),
    ],
)
def test_pointins_only_options_are_clear_errors(
    compose_cfg, data_dir: Path, override: str, message: str
) -> None:
    cfg = tiny_cfg(compose_cfg, data_dir, ["baseline=fcos", override])
    with pytest.raises(InstantiationException, match=message):  # train.py's instantiate
        instantiate(cfg.model, optim=cfg.optim, class_names=["a", "b"], _recursive_=False)


def test_wrapper_losses_need_training_mode_and_predict_keeps_the_mode(
    compose_cfg, data_dir: Path
) -> None:
    parts = model_parts(tiny_cfg(compose_cfg, data_dir))
    net = build_torchvision("maskrcnn", parts["backbone"], parts["neck"], parts["detector"], 8)
    model = TorchvisionDetector("maskrcnn", net)
    batch = hand_batch()
    model.train()
    losses = model.losses(batch.images, batch.image_sizes, batch.targets)
    assert {"loss_classifier", "loss_mask", "loss_objectness"} <= losses.keys()
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    predictions = model.predict(batch.images, batch.image_sizes, batch.orig_sizes)
    assert model.training and net.training  # the mode it found
    for pred, (h0, w0) in zip(predictions, batch.orig_sizes, strict=True):
        assert pred["masks"].shape[1:] == (h0, w0) and pred["masks"].dtype == torch.bool
        assert bool((pred["labels"] >= 0).all()) and bool((pred["labels"] < 8).all())
    model.eval()
    with pytest.raises(RuntimeError, match="training mode"):
        model.losses(batch.images, batch.image_sizes, batch.targets)


class _Schedule(Callback):
    """The learning rate of every optimiser step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.fixture
def run(compose_cfg, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """run(name, extra_overrides) -> (cfg, metrics, output_dir, lrs): ``train.py``'s
    ``train`` with the tiny config, recording the learning rate of each step."""

    def _run(name: str, extra: list[str] | None = None):
        out = tmp_path / name
        cfg = tiny_cfg(compose_cfg, data_dir, extra)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
            del cfg.hydra
        schedule = _Schedule()

        def with_schedule(cfg, logger_kwargs=None, **overrides):
            trainer = build_trainer(cfg, logger_kwargs, **overrides)
            trainer.callbacks.append(schedule)
            return trainer

        monkeypatch.setattr(train_entry, "build_trainer", with_schedule)
        metrics = train_entry.train(cfg)
        return cfg, metrics, out, schedule.lrs

    return _run


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_trains_through_the_trainer_and_scores_with_the_evaluator(
    run, name: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    cfg, metrics, out, lrs = run(name, [f"baseline={name}", "trainer.max_steps=2"])
    types = ("bbox", "segm") if name == "maskrcnn" else ("bbox",)
    saved = json.loads((out / "metrics.json").read_text())
    for t in types:
        for key in ("AP", "AP50", "AP75"):
            assert f"{t}/{key}" in metrics and f"{t}/{key}" in saved
    assert {k.split("/")[0] for k in saved if "/AP" in k} == set(types)
    assert "speed/images_per_second" in metrics
    assert len(lrs) == 2 and lrs[0] < lrs[1]  # the recipe's warm-up, stepped by Lightning
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert hparams["baseline"] == name and ckpt["global_step"] == 2
    assert module_class(hparams) is TorchvisionModule
    # the checkpoint scores the same again (what eval.py does with the module's class)
    backbone = {**hparams["backbone"], "pretrained": False}
    model = TorchvisionModule.load_from_checkpoint(
        out / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
        backbone=backbone,
    )
    datamodule = build_datamodule(cfg)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path / "eval",
        precision=cfg.trainer.precision,  # the run's
    )
    (evaluated,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    for t in types:
        assert evaluated[f"{t}/AP"] == pytest.approx(metrics[f"{t}/AP"], abs=1e-9, nan_ok=True)


def test_baseline_and_pointins_share_the_schedule_and_the_wall_clock_stop(run, monkeypatch) -> None:
    """The same recipe gives the same learning rate at every step to both; trainer.max_time
    stops the run and the final weights are still scored."""
    _, _, _, pointins = run("pointins", ["mask=none", "trainer.max_steps=3"])
    _, _, _, retina = run("retina", ["baseline=retinanet", "trainer.max_steps=3"])
    assert retina == pytest.approx(pointins) and len(retina) == 3
    # Lightning's Timer on a clock that advances 0.25 s each time it is read: the 1 s budget
    # runs out after the same steps on any machine
    clock = iter(itertools.count(step=0.25))
    monkeypatch.setattr(timer_module, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    _, metrics, out, lrs = run(
        "timed", ["baseline=fcos", "trainer.max_time=00:00:00:01", "optim.max_epochs=1000"]
    )
    assert 0 < len(lrs) < 8  # stopped by the clock, not by the epochs
    assert "bbox/AP" in json.loads((out / "metrics.json").read_text()) and "bbox/AP" in metrics


def test_module_class_of_a_pointins_checkpoint() -> None:
    assert module_class({"backbone": {}, "mask": None}) is PointINSModule
    assert issubclass(TorchvisionModule, DetectionModule)
    assert issubclass(PointINSModule, DetectionModule)
