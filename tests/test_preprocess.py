"""What a checkpoint stores for inference resizes and normalises exactly as evaluation does,
and says clearly what is wrong with a bad record."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from datamodules.transforms import build_test_transforms
from pointins.preprocess import Preprocess


@pytest.mark.parametrize("shape", [(3, 60, 90), (3, 200, 50), (3, 97, 97)])
def test_image_is_the_evaluation_pipeline_bit_for_bit(shape):
    image = torch.randint(
        0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    pre = Preprocess(test_scale=80, max_size=150, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    expected = build_test_transforms(80, 150, pre.mean, pre.std)(tv_tensors.Image(image))
    torch.testing.assert_close(pre.image(image), expected.as_subclass(torch.Tensor), rtol=0, atol=0)


def test_batch_pads_to_the_divisibility_and_reports_unpadded_sizes():
    pre = Preprocess(test_scale=64, max_size=100, size_divisibility=32)
    images = [torch.zeros(3, 50, 80, dtype=torch.uint8), torch.zeros(3, 90, 45, dtype=torch.uint8)]
    batch, sizes = pre.batch(images)
    assert sizes == [(63, 100), (100, 50)]  # the longer side capped at max_size
    assert tuple(batch.shape) == (2, 3, 128, 128)  # both padded to multiples of 32
    assert batch[0, :, 63:].abs().sum() == 0 and batch[1, :, :, 50:].abs().sum() == 0


def test_round_trip_and_differences():
    pre = Preprocess(test_scale=320, max_size=576)
    again = Preprocess.from_dict(pre.to_dict())
    assert again == pre and not pre.differences(again)
    other = Preprocess(test_scale=800, max_size=1333)
    assert pre.differences(other) == {"test_scale": (320, 800), "max_size": (576, 1333)}


def test_bad_records_are_named():
    with pytest.raises(ValueError, match="unknown preprocessing keys.*'scale'"):
        Preprocess.from_dict({"scale": 3})
    with pytest.raises(ValueError, match="preprocess.test_scale must be a positive"):
        Preprocess(test_scale=0)
    with pytest.raises(ValueError, match="preprocess.mean needs 3 values"):
        Preprocess(mean=(0.5,))
