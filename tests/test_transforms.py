"""Joint transforms keep images, boxes, masks and labels consistent."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torchvision import tv_tensors

from datamodules.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_test_transforms,
    build_train_transforms,
    masks_to_tight_boxes,
    resized_shape,
)

CROP = {"type": "relative_range", "size": [0.5, 0.6]}


def random_sample(
    gen: torch.Generator, height: int, width: int, num: int
) -> tuple[tv_tensors.Image, dict[str, Tensor]]:
    """An image with ``num`` random rectangles/ellipses whose boxes are their tight boxes."""
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)
    ys = torch.arange(height).view(-1, 1).float()
    xs = torch.arange(width).view(1, -1).float()
    masks = []
    for _ in range(num):
        u = torch.rand(4, generator=gen).tolist()
        cy, cx, ry, rx = u[0] * height, u[1] * width, 4 + u[2] * height / 3, 4 + u[3] * width / 3
        if torch.rand(1, generator=gen) < 0.5:
            mask = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
        else:
            mask = ((ys - cy).abs() <= ry) & ((xs - cx).abs() <= rx)
        masks.append(mask)
    masks_t = torch.stack(masks).to(torch.uint8)  # (n, H, W)
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            masks_to_tight_boxes(masks_t), format="XYXY", canvas_size=(height, width)
        ),
        "masks": tv_tensors.Mask(masks_t),
        "labels": torch.arange(num, dtype=torch.int64),
    }
    return tv_tensors.Image(image), target


def assert_boxes_fit_masks(target: dict[str, Tensor], tol: float = 1.5) -> None:
    """Every instance with a non-empty mask has a box within ``tol`` px of the mask's tight box.

    Resizing samples masks at pixel centres: a one-pixel tip of a shape can be skipped
    when downscaling, moving the mask's edge by up to one output pixel plus rounding.
    """
    masks, boxes, labels = target["masks"], target["boxes"], target["labels"]
    assert masks.shape[0] == boxes.shape[0] == labels.shape[0]
    non_empty = masks.flatten(1).any(dim=1).bool()
    tight = masks_to_tight_boxes(masks.as_subclass(Tensor))
    diff = (boxes.as_subclass(Tensor) - tight)[non_empty].abs()
    assert diff.numel() == 0 or diff.max() <= tol, diff.max()


def test_resized_shape_exact_shorter_side_and_cap() -> None:
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(640, 480, 800, 1333) == (1067, 800)
    assert resized_shape(300, 1000, 800, 1333) == (400, 1333)  # longer side capped
    for short_len in range(100, 700):  # floor-based resizers give 799 for some of these
        assert min(resized_shape(short_len, 1000, 800, 10_000)) == 800


@pytest.mark.parametrize("crop", [None, CROP])
def test_train_transforms_keep_boxes_on_masks(crop: dict | None) -> None:
    gen = torch.Generator().manual_seed(0)
    transforms = build_train_transforms([48, 64, 80], max_size=120, hflip_prob=0.5, crop=crop)
    for seed in range(60):
        torch.manual_seed(seed)
        height, width = (int(v) for v in torch.randint(30, 150, (2,), generator=gen))
        image, target = random_sample(gen, height, width, num=4)
        out_image, out_target = transforms(image, target)
        assert out_image.shape[-2:] == out_target["masks"].shape[-2:]
        assert tuple(out_target["boxes"].canvas_size) == tuple(out_image.shape[-2:])
        assert_boxes_fit_masks(out_target)


def test_test_transforms_keep_boxes_on_masks() -> None:
    gen = torch.Generator().manual_seed(1)
    transforms = build_test_transforms(64, max_size=100)
    for _ in range(40):
        height, width = (int(v) for v in torch.randint(30, 200, (2,), generator=gen))
        image, target = random_sample(gen, height, width, num=3)
        _, out_target = transforms(image, target)
        assert_boxes_fit_masks(out_target)


def test_crop_recomputes_boxes_and_drops_cropped_out_instances() -> None:
    """After a crop every box is the tight box of what is left of its mask (or gone)."""
    gen = torch.Generator().manual_seed(2)
    transforms = build_train_transforms([60], max_size=1000, hflip_prob=0.0, crop=CROP)
    dropped = 0
    for seed in range(60):
        torch.manual_seed(seed)
        image, target = random_sample(gen, 60, 80, num=5)
        _, out = transforms(image, target)
        assert_boxes_fit_masks(out)
        assert out["masks"].flatten(1).any(dim=1).all()  # a kept box implies a visible mask
        dropped += 5 - len(out["labels"])
    assert dropped > 0  # the crop did remove some instances


@pytest.mark.parametrize("height,width", [(37, 53), (90, 41)])
def test_flip_mirrors_exactly(height: int, width: int) -> None:
    gen = torch.Generator().manual_seed(3)
    image, target = random_sample(gen, height, width, num=3)
    # shorter side unchanged and no cap: the pipeline is flip + normalisation only
    transforms = build_train_transforms([min(height, width)], max_size=10_000, hflip_prob=1.0)
    out_image, out = transforms(image, target)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected_image = (image.flip(-1).float() / 255 - mean) / std
    torch.testing.assert_close(out_image.as_subclass(Tensor), expected_image)
    assert torch.equal(out["masks"].as_subclass(Tensor), target["masks"].flip(-1))
    x1, y1, x2, y2 = target["boxes"].unbind(1)
    expected_boxes = torch.stack([width - x2, y1, width - x1, y2], dim=1)
    assert torch.equal(out["boxes"].as_subclass(Tensor), expected_boxes.as_subclass(Tensor))
    assert torch.equal(out["labels"], target["labels"])


def test_resize_shorter_side_from_list_and_longer_side_capped() -> None:
    gen = torch.Generator().manual_seed(4)
    scales, max_size = [40, 56, 72], 100
    transforms = build_train_transforms(scales, max_size=max_size, hflip_prob=0.5)
    seen = set()
    for seed in range(60):
        torch.manual_seed(seed)
        height, width = (int(v) for v in torch.randint(20, 300, (2,), generator=gen))
        image, target = random_sample(gen, height, width, num=1)
        out_image, _ = transforms(image, target)
        short, long = sorted(out_image.shape[-2:])
        assert long <= max_size
        if short in scales:
            seen.add(short)
            assert long == round(short * max(height, width) / min(height, width))
        else:  # the cap applied: the longer side is max_size
            assert long == max_size
            assert short < max(scales)
    assert seen == set(scales)


def test_test_resize_uses_test_scale() -> None:
    image, target = random_sample(torch.Generator().manual_seed(5), 120, 90, num=2)
    out_image, _ = build_test_transforms(60, max_size=1000)(image, target)
    assert tuple(out_image.shape) == (3, 80, 60)


def test_sanitize_drops_degenerate_boxes_with_masks_and_labels() -> None:
    height = width = 400
    masks = torch.zeros((3, height, width), dtype=torch.uint8)
    masks[0, 10:200, 20:300] = 1
    masks[1, 50:52, 100:300] = 1  # 2 px tall: 0.5 px after resizing to 100
    masks[2, 300:390, 250:260] = 1
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            masks_to_tight_boxes(masks), format="XYXY", canvas_size=(height, width)
        ),
        "masks": tv_tensors.Mask(masks),
        "labels": torch.tensor([5, 9, 7]),
    }
    image = tv_tensors.Image(torch.zeros((3, height, width), dtype=torch.uint8))
    _, out = build_train_transforms([100], max_size=1000, hflip_prob=0.0)(image, target)
    assert out["labels"].tolist() == [5, 7]
    assert out["masks"].shape == (2, 100, 100)
    expected = torch.tensor([[5.0, 2.5, 75.0, 50.0], [62.5, 75.0, 65.0, 97.5]])
    torch.testing.assert_close(out["boxes"].as_subclass(Tensor), expected)
    assert_boxes_fit_masks(out)


def test_test_pipeline_takes_an_unlabelled_image() -> None:
    # prediction on a user's folder has no targets: the test pipeline must not need them
    image = tv_tensors.Image(torch.full((3, 200, 400), 128, dtype=torch.uint8))
    out = build_test_transforms(100, max_size=1000)(image)
    assert out.shape == (3, 100, 200) and out.dtype == torch.float32


def test_sample_without_instances_passes() -> None:
    image, target = random_sample(torch.Generator().manual_seed(6), 50, 70, num=1)
    empty = {
        "boxes": tv_tensors.wrap(target["boxes"][:0], like=target["boxes"]),
        "masks": tv_tensors.Mask(target["masks"][:0]),
        "labels": target["labels"][:0],
    }
    out_image, out = build_train_transforms([40], 100, crop=CROP)(image, empty)
    assert out_image.dtype == torch.float32
    assert out["masks"].shape == (0, *out_image.shape[-2:])
    assert out["boxes"].shape == (0, 4)


def test_output_types() -> None:
    image, target = random_sample(torch.Generator().manual_seed(7), 50, 70, num=2)
    out_image, out = build_train_transforms([40], 100)(image, target)
    assert out_image.dtype == torch.float32
    assert out["masks"].dtype == torch.uint8
    assert out["boxes"].dtype == torch.float32
    assert out["labels"].dtype == torch.int64


def test_unknown_crop_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="data.crop.type"):
        build_train_transforms([800], 1333, crop={"type": "absolute", "size": [640, 640]})
