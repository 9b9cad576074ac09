"""Collate pads images, records sizes and keeps targets per image."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_lightning.utilities import move_data_to_device
from torch import Tensor
from torchvision import tv_tensors

from datamodules.collate import Batch, Collate


def make_sample(image_id: int, height: int, width: int, num: int) -> tuple:
    """A transformed sample as the dataset returns it (tv_tensors in the target)."""
    gen = torch.Generator().manual_seed(image_id)
    image = tv_tensors.Image(torch.randn((3, height, width), generator=gen))
    boxes = torch.tensor([[1.0, 2.0, 5.0, 6.0]]).repeat(num, 1)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "masks": tv_tensors.Mask(torch.randint(0, 2, (num, height, width), dtype=torch.uint8)),
        "labels": torch.arange(num, dtype=torch.int64),
    }
    meta = {"image_id": image_id, "orig_size": (2 * height, 2 * width)}
    return image, target, meta


SIZES = [(50, 70), (130, 20), (64, 64)]


@pytest.mark.parametrize("divisibility", [1, 32, 128])
def test_pads_to_multiple_and_keeps_content_top_left(divisibility: int) -> None:
    samples = [make_sample(i + 10, h, w, num=i) for i, (h, w) in enumerate(SIZES)]
    batch = Collate(divisibility)(samples)
    expected_h = math.ceil(130 / divisibility) * divisibility
    expected_w = math.ceil(70 / divisibility) * divisibility
    assert batch.images.shape == (3, 3, expected_h, expected_w)
    for padded, (image, _, _), (h, w) in zip(batch.images, samples, SIZES, strict=True):
        assert torch.equal(padded[:, :h, :w], image.as_subclass(Tensor))
        assert padded[:, h:, :].abs().sum() == 0 and padded[:, :, w:].abs().sum() == 0


def test_records_sizes_ids_and_targets_per_image() -> None:
    samples = [make_sample(i + 10, h, w, num=i) for i, (h, w) in enumerate(SIZES)]
    batch = Collate()(samples)
    assert len(batch) == 3
    assert batch.image_sizes == SIZES
    assert batch.orig_sizes == [(2 * h, 2 * w) for h, w in SIZES]
    assert batch.image_ids == [10, 11, 12]
    for target, (_, expected, _) in zip(batch.targets, samples, strict=True):
        assert set(target) == {"boxes", "masks", "labels"}
        for key, value in target.items():
            assert type(value) is Tensor  # plain tensors, no tv_tensors subclasses
            assert torch.equal(value, expected[key].as_subclass(Tensor))
    assert batch.targets[0]["masks"].shape == (0, 50, 70)


def test_move_data_to_device_moves_every_tensor() -> None:
    batch = Collate()([make_sample(i, h, w, num=2) for i, (h, w) in enumerate(SIZES)])
    for device in ("cpu", "meta"):  # "meta" proves every tensor is visited, not just kept
        moved = move_data_to_device(batch, device)
        assert isinstance(moved, Batch)
        assert moved.images.device.type == device
        assert all(v.device.type == device for t in moved.targets for v in t.values())
        assert moved.image_sizes == batch.image_sizes and moved.image_ids == batch.image_ids
    assert batch.images.device.type == "cpu"  # the original is left alone


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator")
def test_pin_memory_pins_every_tensor() -> None:
    pinned = Collate()([make_sample(0, 20, 30, num=2)]).pin_memory()
    assert pinned.images.is_pinned()
    assert all(v.is_pinned() for v in pinned.targets[0].values())


def test_rejects_bad_divisibility() -> None:
    with pytest.raises(ValueError, match="size_divisibility"):
        Collate(0)


def test_size_buckets_pad_to_the_smallest_holding_bucket_and_nothing_else() -> None:
    """A bucketed batch is the unbucketed one, zero-padded further: equal where the
    images are, zero elsewhere, with the same sizes and targets."""
    samples = [make_sample(i + 10, h, w, num=i) for i, (h, w) in enumerate(SIZES)]
    plain = Collate(32)(samples)  # (3, 3, 160, 96)
    bucketed = Collate(32, size_buckets=[256, 128, 192])(samples)
    assert bucketed.images.shape == (3, 3, 192, 128)
    torch.testing.assert_close(bucketed.images[..., :160, :96], plain.images, rtol=0, atol=0)
    assert bucketed.images[..., 160:, :].abs().sum() == 0
    assert bucketed.images[..., :, 96:].abs().sum() == 0
    assert bucketed.image_sizes == plain.image_sizes and bucketed.image_ids == plain.image_ids
    big = Collate(32, size_buckets=[64])(samples)  # no bucket holds 130: the multiple of 32
    assert big.images.shape == (3, 3, 160, 96)
    shapes = {  # every batch of the sizes a 256-352 px recipe meets: a handful of shapes
        tuple(Collate(32, [320, 384, 448, 576])([make_sample(0, h, w, 0)]).images.shape[-2:])
        for h in range(256, 353, 7)
        for w in range(256, 577, 13)
    }
    assert shapes <= {(a, b) for a in (320, 384, 448, 576) for b in (320, 384, 448, 576)}
    with pytest.raises(ValueError, match=r"data.size_buckets \[100\] must be positive multiples"):
        Collate(32, size_buckets=[100])
