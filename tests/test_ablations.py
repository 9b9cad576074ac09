"""conf/ablation: each sweep's jobs are exactly the rows of its paper table (T2–T11).

The sweep is expanded the way Hydra's basic sweeper expands it (parse ``hydra.sweeper.params``,
``BasicSweeper.split_arguments``), every job is composed with its overrides, and the
resolved values and the model built from them are checked row by row.
"""

from __future__ import annotations

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from pointins.model import build_model
from pointins.tables import sweep_jobs as expand

# table -> (config name, [row: {dotted key: value}]) in the paper's row order
TABLES = {
    "T2": ("template_shape", [
        {"model.mask.E": e, "model.mask.K": k, "model.mask.kernel_size": 3}
        for e, k in [(9, 16), (1, 16), (4, 16), (36, 8), (1, 48), (16, 16), (25, 16)]
    ]),
    "T3": ("template_kernel", [
        {"model.mask.kernel_size": kt, "model.mask.E": kt * kt, "model.mask.K": 16}
        for kt in (3, 1, 5, 7)
    ]),
    "T4": ("iz_inputs", [
        {"model.mask.iz_parts": parts}
        for parts in [[], ["io"], ["offset"], ["boundary"], ["io", "offset"],
                      ["offset", "boundary"], ["io", "boundary"], ["io", "offset", "boundary"]]
    ]),
    "T5": ("iz_design", [
        {"model.mask.iz_design": d}
        for d in ["feature", "fpn_offset", "log_io", "sigmoid", "tanh", "default"]
    ]),
    "T6": ("weight_generator", [
        {"model.mask.generator": g} for g in ["fc_relu", "fc", "2fc_relu", "fc_relu_fc"]
    ]),
    "T7": ("fusion", [
        {"model.mask.fusion": f} for f in ["add", "concat", "conv3x3", "conv1x1"]
    ]),
    "T8": ("num_points", [
        {"model.mask.sampling.num_samples": n} for n in [32, 64, 128, 256, None]
    ]),
    "T9": ("iou_thresholds", [
        {"model.mask.sampling.anchor_iou": a, "model.mask.sampling.box_iou": b}
        for a, b in [(0.4, 0.5), (0.5, 0.5), (0.5, 0.6), (0.5, 0.7), (0.6, 0.6)]
    ]),
    "T10": ("target_boxes", [
        {"model.mask.sampling.target_box_probs": p}
        for p in [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.05, 0.05, 0.9]]
    ]),
    "T11": ("test_scale", [
        {"data.test_scale": t, "data.max_size": m}
        for t, m in [(800, 1333), (600, 1000), (400, 667)]
    ]),
}  # fmt: skip


def sweep_jobs(cfg) -> list[list[str]]:
    """The per-job override lists Hydra's basic sweeper makes from ``hydra.sweeper.params``."""
    return expand(OmegaConf.to_container(cfg.hydra.sweeper.params or {}))


@pytest.mark.parametrize("table", list(TABLES))
def test_sweep_jobs_are_the_table_rows(compose_cfg, table):
    name, rows = TABLES[table]
    base = [f"ablation={name}", "experiment=shapes"]
    jobs = sweep_jobs(compose_cfg(base))
    assert len(jobs) == len(rows), jobs
    for job, row in zip(jobs, rows, strict=True):
        cfg = compose_cfg([*base, *job])
        for key, expected in row.items():
            value = OmegaConf.select(cfg, key)
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            assert value == expected, (job, key)
        model = OmegaConf.to_container(cfg.model, resolve=True)
        built = build_model(
            model["backbone"], model["neck"], model["detector"], model["mask"], 8, 1.0
        )
        mask = built.mask
        assert (
            OmegaConf.select(cfg, "model.mask.E"),
            OmegaConf.select(cfg, "model.mask.K"),
        ) == (mask.E, mask.K)


@pytest.mark.parametrize("table", list(TABLES))
def test_sweeps_run_on_the_papers_baseline(compose_cfg, table):
    """Without experiment=, a sweep is the paper's: COCO, RetinaNet (§4.1.1), R-50 from
    ImageNet weights with frozen BatchNorm, Adam at the batch-16 rate."""
    cfg = compose_cfg([f"ablation={TABLES[table][0]}"])
    backbone = cfg.model.backbone
    assert backbone.name == "resnet50.tv_in1k" and backbone.pretrained
    assert backbone.norm == "frozen_bn"
    assert cfg.model.detector.assigner._target_.endswith("IoUAssigner")  # RetinaNet
    assert cfg.data._target_ == "datamodules.coco.CocoDataModule"
    assert cfg.optim.optimizer.lr == 5e-5 and cfg.optim.reference_batch == 16


# the options beyond the paper and λ_mask, at the values of conf/mask/pointins.yaml
PAPER_MODULE = ("template_from", "template_max_level", "output_scale", "dice_weight",
                "maskness", "loss_weight")  # fmt: skip


@pytest.mark.parametrize("experiment", [None, "shapes"])
@pytest.mark.parametrize("table", [t for t in TABLES if t != "T11"])  # T11 evaluates a checkpoint
def test_every_row_runs_the_papers_mask_module(compose_cfg, table, experiment):
    """Each job of T2–T10 builds point templates at λ_mask = 2 with every option beyond the
    paper off, on COCO and on experiment=shapes (whose own default is box templates at
    λ_mask = 1), and keeps the experiment's sizes (K, B) where the table does not vary them."""
    paper = compose_cfg(["mask=pointins"]).model.mask
    sized = compose_cfg(["experiment=shapes"] if experiment else []).model.mask
    base = [f"ablation={TABLES[table][0]}", *([f"experiment={experiment}"] if experiment else [])]
    for job in sweep_jobs(compose_cfg(base)):
        cfg = compose_cfg([*base, *job])
        mask = cfg.model.mask
        assert {k: mask[k] for k in PAPER_MODULE} == {k: paper[k] for k in PAPER_MODULE}, job
        assert mask.template_from == "point" and mask.loss_weight == 2.0
        if not any(o.startswith(("model.mask.K=", "row=")) for o in job):
            assert (mask.K, mask.mask_dim) == (sized.K, sized.mask_dim), job
        if experiment is None:
            continue  # the COCO set-up's R-50 needs ImageNet weights to build
        model = OmegaConf.to_container(cfg.model, resolve=True)
        net = build_model(model["backbone"], model["neck"], model["detector"], model["mask"], 8)
        assert type(net.mask.template_branch).__name__ == "TemplateBranch"
        assert (net.mask_weight, net.maskness, net.dice_weight) == (2.0, False, 0.0)


def test_task_name_names_the_table(compose_cfg):
    for name, _ in TABLES.values():
        assert compose_cfg([f"ablation={name}"]).task_name == f"ablation_{name}"


def test_other_overrides_compose_with_a_sweep(compose_cfg):
    cfg = compose_cfg(["ablation=iz_inputs", "experiment=shapes", "trainer.max_steps=20"])
    assert cfg.trainer.max_steps == 20 and cfg.model.backbone.name == "resnet18.tv_in1k"
    assert len(sweep_jobs(cfg)) == 8


def test_slurm_launcher_composes(compose_cfg):
    cfg = compose_cfg(["ablation=iz_inputs", "hydra/launcher=slurm", "trainer.devices=8"])
    launcher = cfg.hydra.launcher
    assert "SlurmLauncher" in launcher._target_
    assert launcher.tasks_per_node == launcher.gpus_per_node == 8


def test_sweep_directory_resolves_before_hydra_runtime(compose_cfg) -> None:
    # Hydra resolves hydra.sweep.dir before it sets its runtime config: a ${hydra:...}
    # interpolation there (directly or through paths.*) makes every `-m` launch fail
    cfg = compose_cfg(["ablation=iz_inputs", "experiment=shapes"])
    HydraConfig.instance().cfg = None  # as at multirun launch time
    sweep_dir = OmegaConf.select(cfg, "hydra.sweep.dir", throw_on_resolution_failure=True)
    assert sweep_dir.startswith("multirun/ablation_iz_inputs/")


def test_mask_quality_sweep_rows_build(compose_cfg):
    """``ablation=mask_quality``: the paper's design first, then one option per row, then
    mask=pointins_plus's combination, each reaching the built network, on the detector
    chosen (FCOS with experiment=shapes)."""
    base = ["ablation=mask_quality", "experiment=shapes"]
    jobs = sweep_jobs(compose_cfg(base))
    assert len(jobs) == 7
    built = []
    for job in jobs:
        cfg = compose_cfg([*base, *job])
        assert cfg.model.detector.assigner._target_.endswith("FCOSAssigner")
        model = OmegaConf.to_container(cfg.model, resolve=True)
        net = build_model(model["backbone"], model["neck"], model["detector"], model["mask"], 8)
        built.append(
            (
                net.maskness,
                net.mask.mask_size // net.mask.K,
                net.dice_weight,
                getattr(net.mask.template_branch, "max_level", None),
                type(net.mask.template_branch).__name__,
                net.mask_weight,
            )
        )
    point, box = "TemplateBranch", "BoxTemplateBranch"
    assert built == [
        (False, 2, 0.0, None, point, 2.0),  # the paper
        (True, 2, 0.0, None, point, 2.0),
        (False, 4, 0.0, None, point, 2.0),
        (False, 2, 1.0, None, point, 2.0),
        (False, 2, 0.0, 1, point, 2.0),
        (False, 2, 0.0, None, box, 2.0),
        (False, 2, 0.0, None, box, 1.0),  # pointins_plus
    ]


def test_pointins_plus_is_the_last_mask_quality_row(compose_cfg):
    """mask=pointins_plus (and pointins_small_plus, the demo's default) reads templates from
    the box, the sweep's last row, with λ_mask = 1, and changes nothing else;
    mask=pointins / pointins_small keep the paper's point templates and λ_mask = 2."""
    for plus, paper in (("pointins_plus", "pointins"), ("pointins_small_plus", "pointins_small")):
        with_plus = compose_cfg([f"mask={plus}"]).model.mask
        without = compose_cfg([f"mask={paper}"]).model.mask
        keys = ("template_from", "loss_weight")
        assert [with_plus[k] for k in keys] == ["box", 1.0]
        assert [without[k] for k in keys] == ["point", 2.0]
        rest = {k: v for k, v in with_plus.items() if k not in keys}
        assert rest == {k: v for k, v in without.items() if k not in keys}
    demo = compose_cfg(["experiment=shapes"]).model.mask
    assert demo == compose_cfg(["experiment=shapes", "mask=pointins_small_plus"]).model.mask
    assert compose_cfg(["experiment=shapes"]).model.mask.K == 8
