"""Drawing for people: de-normalised pixels are the datamodule's input pixels, a mask colours
exactly its pixels in its class colour, a box outline lies on the box's border."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transforms
from pointins.inference.visualize import class_color, draw_instances
from pointins.preprocess import denormalize

H, W = 48, 64
GREY = 100
NAMES = ["disc", "ring", "frame"]


def _grey() -> torch.Tensor:
    return torch.full((3, H, W), GREY, dtype=torch.uint8)


def _changed(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return (before != after).any(dim=0)  # (H, W)


@pytest.mark.parametrize(
    ("mean", "std"), [(IMAGENET_MEAN, IMAGENET_STD), ((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))]
)
def test_denormalize_inverts_the_datamodule_normalisation(mean, std) -> None:
    pixels = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=torch.manual_seed(0))
    pixels[:, 0, :3] = torch.tensor([[0, 255, 128]] * 3)  # both ends of the range
    normalised = build_test_transforms(H, 10 * W, mean, std)(tv_tensors.Image(pixels))
    assert normalised.dtype == torch.float32 and normalised.shape == (3, H, W)
    back = denormalize(normalised.as_subclass(torch.Tensor), mean, std)
    assert back.dtype == torch.uint8
    assert torch.equal(back, pixels)


def test_denormalize_clamps_out_of_range_values() -> None:
    image = torch.tensor([-10.0, 0.0, 10.0]).view(3, 1, 1).expand(3, 2, 2)
    out = denormalize(image, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert out[:, 0, 0].tolist() == [0, 0, 255]


def test_class_colors_are_stable_and_distinct() -> None:
    colors = [class_color(label) for label in range(80)]
    assert len(set(colors)) == 80
    assert colors == [class_color(label) for label in range(80)]
    assert all(0 <= c <= 255 for color in colors for c in color)


def test_mask_colours_exactly_its_pixels_in_its_class_colour() -> None:
    mask = torch.zeros(1, H, W, dtype=torch.bool)
    mask[0, 25:40, 20:30] = True
    mask[0, 30:35, 35:55] = True  # a second part, apart from the first
    mask[0, 30, 24] = False  # a hole
    box = torch.tensor([[2.0, 2.0, W - 3.0, H - 3.0]])  # far from the mask
    target = {"labels": torch.tensor([1]), "boxes": box, "masks": mask.to(torch.uint8)}
    image = _grey()
    drawn = draw_instances(image, target, NAMES)
    interior = torch.zeros(H, W, dtype=torch.bool)
    interior[20 : H - 5, 5 : W - 5] = True  # inside the outline, below the class name
    assert torch.equal(_changed(image, drawn) & interior, mask[0] & interior)
    blended = torch.tensor([round(0.5 * GREY + 0.5 * c) for c in class_color(1)])
    on = drawn[:, mask[0]]  # (3, n) the mask's pixels
    assert ((on.int() - blended[:, None]).abs() <= 1).all()
    assert torch.equal(image, _grey())  # the input is left as it was


def test_box_outline_lands_on_the_box_border() -> None:
    x1, y1, x2, y2 = 10, 12, 50, 40
    target = {"labels": torch.tensor([2]), "boxes": torch.tensor([[x1, y1, x2, y2]]).float()}
    image = _grey()
    drawn = draw_instances(image, target, NAMES)
    changed = _changed(image, drawn)
    inside = torch.zeros(H, W, dtype=torch.bool)
    inside[y1 : y2 + 1, x1 : x2 + 1] = True
    assert not (changed & ~inside).any()  # outline and name stay within the box
    color = torch.tensor(class_color(2), dtype=torch.uint8)
    border = torch.zeros(H, W, dtype=torch.bool)
    border[y1, x1 : x2 + 1] = border[y2, x1 : x2 + 1] = True
    border[y1 : y2 + 1, x1] = border[y1 : y2 + 1, x2] = True
    assert (drawn[:, border] == color[:, None]).all()  # every border pixel, class coloured
    assert torch.equal(
        drawn[:, y1 + 15 : y2 - 3, x1 + 3 : x2 - 3], image[:, y1 + 15 : y2 - 3, x1 + 3 : x2 - 3]
    )


def test_each_instance_gets_its_class_colour_and_scores_change_the_caption() -> None:
    boxes = torch.tensor([[2.0, 2.0, 20.0, 20.0], [30.0, 20.0, 60.0, 44.0]])
    target = {"labels": torch.tensor([0, 2]), "boxes": boxes}
    drawn = draw_instances(_grey(), target, NAMES)
    assert drawn[:, 20, 10].tolist() == list(class_color(0))  # bottom edge of box 0
    assert drawn[:, 44, 45].tolist() == list(class_color(2))  # bottom edge of box 1
    scored = draw_instances(_grey(), {**target, "scores": torch.tensor([0.9, 0.25])}, NAMES)
    assert not torch.equal(scored, drawn)  # "disc 0.90" is written, not "disc"
    assert torch.equal(scored[:, 20, :], drawn[:, 20, :])  # the outlines are the same


def test_no_instances_leaves_the_image_as_it_is() -> None:
    image = _grey()
    empty = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}
    assert torch.equal(draw_instances(image, empty, NAMES), image)
