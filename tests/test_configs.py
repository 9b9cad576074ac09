"""The config tree composes for every documented command, with the paper's defaults."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def test_defaults_are_the_paper_baseline(compose_cfg):
    cfg = compose_cfg()
    assert cfg.data._target_ == "datamodules.coco.CocoDataModule"
    b = cfg.model.backbone
    assert b.name == "resnet50.tv_in1k" and b.pretrained and b.checkpoint_path is None
    assert b.norm == "frozen_bn" and b.frozen_stages == 1
    assert cfg.model.detector.assigner._target_.endswith("IoUAssigner")
    assert cfg.model.neck.out_channels == 256
    m = cfg.model.mask
    assert (m.K, m.E, m.kernel_size, m.mask_dim, m.fusion) == (16, 9, 3, 256, "conv1x1")
    assert list(m.iz_parts) == ["io", "offset", "boundary"]
    assert list(m.sampling.target_box_probs) == [0.05, 0.05, 0.9]
    assert m.sampling.num_samples == 128 and m.loss_weight == 2.0
    opt = cfg.optim
    assert opt.optimizer._target_ == "torch.optim.Adam" and opt.optimizer.lr == 5e-5
    assert list(opt.scheduler.milestones) == [8, 11] and cfg.trainer.max_epochs == 12
    assert opt.reference_batch == 16 and opt.auto_scale_lr
    assert cfg.monitor == "segm/AP"


@pytest.mark.parametrize(
    "experiment", [e for e in EXPERIMENTS if e.startswith(("coco_", "cityscapes_"))]
)
def test_paper_experiments_start_from_imagenet_weights(compose_cfg, experiment):
    b = compose_cfg([f"experiment={experiment}"]).model.backbone
    assert b.pretrained and b.name.endswith(".tv_in1k") and b.norm == "frozen_bn"


def test_only_the_demo_trains_from_scratch(compose_cfg):
    assert not compose_cfg(["experiment=shapes"]).model.backbone.pretrained
    assert compose_cfg(["data=shapes"]).model.backbone.pretrained


def test_6x_follows_tensormask_schedule(compose_cfg):
    cfg = compose_cfg(["experiment=coco_fcos_r50_6x_aug"])
    assert cfg.trainer.max_epochs == 72
    fractions = [m / 72 for m in cfg.optim.scheduler.milestones]
    assert fractions == pytest.approx([480 / 540, 520 / 540], abs=1e-4)
    assert list(cfg.data.train_scales) == list(range(640, 801, 32))


def test_x101_dcn_is_x101_with_modulated_deformable_res3_to_res5(compose_cfg):
    x101 = compose_cfg(["backbone=x101"]).model.backbone
    dcn = compose_cfg(["backbone=x101_dcn"]).model.backbone
    assert list(dcn.deformable_layers) == ["layer2", "layer3", "layer4"]
    assert dcn.deform_modulated  # DCNv2, as the FCOS-family X-101 DCN recipes
    assert not x101.deformable_layers and not x101.deform_modulated
    assert {**dcn, "deformable_layers": [], "deform_modulated": False} == {**x101}


def test_cityscapes_recipe_is_the_papers_in_epochs(compose_cfg):
    cfg = compose_cfg(["experiment=cityscapes_fcos_r50"])
    assert cfg.optim.reference_batch == 8 and cfg.optim.optimizer.lr == 5e-4
    images_per_epoch = 2975
    iterations = cfg.trainer.max_epochs * images_per_epoch / 8
    assert 24_000 <= iterations < 24_000 + images_per_epoch / 8  # the paper's 24k
    decay = cfg.optim.scheduler.milestones[0] * images_per_epoch / 8
    assert decay == pytest.approx(18_000, rel=1e-3)


def test_detector_and_backbone_swap(compose_cfg):
    cfg = compose_cfg(["detector=fcos", "backbone=r101"])
    assert cfg.model.detector.assigner._target_.endswith("FCOSAssigner")
    assert cfg.model.detector.postprocess.nms_thresh == 0.6
    assert cfg.model.backbone.name == "resnet101.tv_in1k"


def test_mask_none_is_the_plain_detector(compose_cfg):
    cfg = compose_cfg(["mask=none"])
    assert cfg.model.mask is None
    assert cfg.monitor == "bbox/AP"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(compose_cfg, experiment):
    cfg = compose_cfg([f"experiment={experiment}"])
    OmegaConf.to_container(cfg.model, resolve=True)
    OmegaConf.to_container(cfg.data, resolve=False)


def test_unknown_choice_is_a_clear_error(compose_cfg):
    with pytest.raises(Exception, match="detector"):
        compose_cfg(["detector=yolo"])


@pytest.mark.parametrize("args", [[], ["detector=fcos", "backbone=r101"]])
def test_cli_prints_config_without_dataset(args, tmp_path):
    out = subprocess.run(
        [sys.executable, "train.py", *args, "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"POINTINS_DATA": str(tmp_path / "nothing-here"), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert "_target_: pointins.engine.lit_module.PointINSModule" in out.stdout


def test_mask_none_wins_over_the_experiments_mask(compose_cfg):
    cfg = compose_cfg(["experiment=shapes", "mask=none"])
    assert cfg.model.mask is None and cfg.monitor == "bbox/AP"
    small = compose_cfg(["experiment=shapes"]).model.mask
    assert small.mask_dim == 64 and small._target_ == "pointins.mask.InstanceAwareMask"


def test_ablation_num_points_sweeps_table_8(compose_cfg):
    cfg = compose_cfg(["ablation=num_points"])
    values = cfg.hydra.sweeper.params["model.mask.sampling.num_samples"]
    assert values.split(",") == ["32", "64", "128", "256", "null"]
    assert cfg.task_name == "ablation_num_points"


def test_the_demo_is_pointins_fcos_and_each_pair_gets_its_budgets_epochs(compose_cfg):
    """`make train` trains PointINS-FCOS for 9 epochs (conf/budget/); PointINS-RetinaNet and
    the plain detectors keep experiment=shapes' 7."""
    fcos = compose_cfg(["experiment=shapes"])
    retina = compose_cfg(["experiment=shapes", "detector=retinanet"])
    plain = [
        compose_cfg(["experiment=shapes", "mask=none", f"detector={d}"])
        for d in ("fcos", "retinanet")
    ]
    assert fcos.model.detector.assigner._target_.endswith("FCOSAssigner")
    assert retina.model.detector.assigner._target_.endswith("IoUAssigner")
    assert retina.model.mask == fcos.model.mask and retina.data == fcos.data
    assert fcos.optim.max_epochs == 9
    assert [cfg.optim.max_epochs for cfg in (retina, *plain)] == [7, 7, 7]
    # both learning-rate decays come at the same fractions of the run, within 0.1 epoch
    # (7 epochs: 6.4 / 7 = 0.914; 9 epochs: 8.2 / 9 = 0.911)
    for cfg in (fcos, retina, *plain):
        fractions = [m / cfg.optim.max_epochs for m in cfg.optim.scheduler.milestones]
        assert fractions == pytest.approx([0.8, 0.914], abs=0.1 / cfg.optim.max_epochs)
    # the paper-sized COCO runs have no budget file: the 1x schedule stands
    assert compose_cfg(["detector=fcos"]).optim.max_epochs == 12


#: the paper's tables trained as sweeps: test_scale evaluates a checkpoint (whose own model it
#: keeps) and mask_quality, beyond the paper, keeps the chosen detector
TRAINING_ABLATIONS = sorted(
    p.stem
    for p in (ROOT / "conf" / "ablation").glob("*.yaml")
    if p.stem not in ("test_scale", "mask_quality")
)


@pytest.mark.parametrize("ablation", TRAINING_ABLATIONS)
def test_every_ablation_is_retinanet_based_unless_asked(compose_cfg, ablation):
    """§4.1.1: the ablations are RetinaNet-based, also on top of the FCOS demo."""
    pinned = compose_cfg(["experiment=shapes", f"ablation={ablation}"])
    asked = compose_cfg(["experiment=shapes", f"ablation={ablation}", "detector=fcos"])
    assert pinned.model.detector.assigner._target_.endswith("IoUAssigner")
    assert asked.model.detector.assigner._target_.endswith("FCOSAssigner")


@pytest.mark.parametrize(
    "overrides", [[], ["experiment=shapes"], ["experiment=shapes", "detector=retinanet"]]
)
def test_template_side_follows_the_papers_rule(compose_cfg, overrides):
    """§3.2.1: K² equals the PoI feature's width (16² = 256 in the paper, 8² = 64 in the
    demo), and E = k_t², so the template is as large as the patch it is computed from."""
    cfg = compose_cfg(overrides)
    mask, detector = cfg.model.mask, cfg.model.detector
    assert detector.head.conv_dim == mask.K**2
    assert mask.kernel_size**2 == mask.E


OPTION = re.compile(r"\b((?:model|data|optim|trainer|eval|predict|logger|callbacks)(?:\.\w+)+)=")


def _keys(node, prefix="") -> set[str]:
    if not OmegaConf.is_dict(node):
        return {prefix[:-1]}
    out = {prefix[:-1]} if prefix else set()
    for key in node:
        out |= _keys(node._get_node(key), f"{prefix}{key}.")
    return out


def test_options_named_in_messages_and_comments_exist(compose_cfg):
    """Every ``group.key=`` an error message, log line or config comment tells the user to
    type names a key of the composed configuration (of some data set / eval choice)."""
    known = set()
    choices = ([], ["data=cityscapes"], ["experiment=coco_fcos_r50_6x_aug"])
    for overrides, name in [*((c, "train") for c in choices), ([], "eval")]:
        cfg = compose_cfg(overrides, config_name=name)
        known |= _keys(cfg)
    sources = [*(ROOT / "pointins").rglob("*.py"), *(ROOT / "datamodules").rglob("*.py")]
    sources += [ROOT / "train.py", ROOT / "eval.py", *(ROOT / "conf").rglob("*.yaml")]
    named = {(m.group(1), p.name) for p in sources for m in OPTION.finditer(p.read_text())}
    unknown = sorted((key, where) for key, where in named if key not in known)
    assert len(named) > 20 and not unknown
