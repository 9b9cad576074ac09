"""Paste ``S x S`` box-relative mask probabilities into full images (SPEC §6).

Detectron2's ``_do_paste_mask`` idea: for every image pixel ``(i, j)`` (centre
``(j + 0.5, i + 0.5)``) and every instance with box ``(x1, y1, x2, y2)``, the pixel's
position in the box, normalised to ``[-1, 1]``, is

    gx = (j + 0.5 - x1) / (x2 - x1) * 2 - 1,    gy = (i + 0.5 - y1) / (y2 - y1) * 2 - 1,

and ``F.grid_sample(mask, grid, align_corners=False)`` interpolates the mask there
bilinearly (zero outside the box). Then the probability is thresholded.

Memory and work: instances are processed in chunks; each chunk samples only the
rectangle of the image covered by the union of its boxes (clamped to the image,
widened by 1 px for the bilinear fringe) and writes it into a zero ``(n, H, W)`` bool
output. Small chunks (1 on CPU, the default) keep the work proportional to the boxes'
areas instead of ``n * H * W``, at the price of one Python iteration per instance; on
a GPU the kernel-launch overhead dominates, so large chunks (bounded by a memory
budget) are used and the union rectangle is usually most of the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: Bytes per sampled pixel assumed when sizing GPU chunks (grid 2 x 4 B, output 4 B, slack).
_BYTES_PER_PIXEL = 16
#: Memory budget of one GPU chunk.
_GPU_CHUNK_BYTES = 1 << 30


def _default_chunk_size(device: torch.device, height: int, width: int) -> int:
    if device.type == "cpu":
        return 1
    return max(1, _GPU_CHUNK_BYTES // max(1, height * width * _BYTES_PER_PIXEL))


def _paste_chunk(masks: Tensor, boxes: Tensor, height: int, width: int) -> tuple[Tensor, int, int]:
    """Interpolated probabilities of ``c`` masks over the union rectangle of their boxes.

    Returns:
        ``(c, h, w)`` float probabilities and the rectangle's top-left ``(y0, x0)``.
    """
    x0 = max(int(math.floor(boxes[:, 0].min().item())) - 1, 0)
    y0 = max(int(math.floor(boxes[:, 1].min().item())) - 1, 0)
    x1 = min(int(math.ceil(boxes[:, 2].max().item())) + 1, width)
    y1 = min(int(math.ceil(boxes[:, 3].max().item())) + 1, height)
    num = masks.shape[0]
    if x1 <= x0 or y1 <= y0:  # every box lies outside the image
        return masks.new_zeros((num, 0, 0)), 0, 0
    bx1, by1, bx2, by2 = boxes.unbind(dim=1)  # (c,) each
    img_x = torch.arange(x0, x1, device=masks.device, dtype=masks.dtype) + 0.5  # (w,)
    img_y = torch.arange(y0, y1, device=masks.device, dtype=masks.dtype) + 0.5  # (h,)
    bw = (bx2 - bx1).clamp(min=1e-6)[:, None]  # (c, 1); degenerate boxes sample nothing
    bh = (by2 - by1).clamp(min=1e-6)[:, None]  # (c, 1)
    gx = (img_x[None, :] - bx1[:, None]) / bw * 2 - 1  # (c, w)
    gy = (img_y[None, :] - by1[:, None]) / bh * 2 - 1  # (c, h)
    h, w = gy.shape[1], gx.shape[1]
    grid = torch.stack(
        [gx[:, None, :].expand(num, h, w), gy[:, :, None].expand(num, h, w)], dim=3
    )  # (c, h, w, 2) as (x, y)
    probs = F.grid_sample(masks[:, None], grid, mode="bilinear", align_corners=False)
    return probs[:, 0], y0, x0  # (c, h, w)


def paste_masks(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float = 0.5,
    chunk_size: int | None = None,
) -> Tensor:
    """Paste box-relative mask probabilities into the image and binarise them.

    Args:
        masks: ``(n, S, S)`` probabilities (after sigmoid), box-relative.
        boxes: ``(n, 4)`` xyxy in the output image's pixels (may extend outside it).
        image_size: ``(H, W)`` of the output image.
        threshold: a pixel is foreground when its interpolated probability ``>= threshold``.
        chunk_size: instances per chunk; ``None`` = 1 on CPU, else as many as fit ~1 GiB.

    Returns:
        ``(n, H, W)`` bool.
    """
    height, width = int(image_size[0]), int(image_size[1])
    num = masks.shape[0]
    out = torch.zeros((num, height, width), dtype=torch.bool, device=masks.device)
    if num == 0 or height == 0 or width == 0:
        return out
    dtype = masks.dtype if masks.dtype in (torch.float32, torch.float64) else torch.float32
    masks = masks.to(dtype)
    boxes = boxes.to(device=masks.device, dtype=dtype)
    if chunk_size is None:
        chunk_size = _default_chunk_size(masks.device, height, width)
    for start in range(0, num, chunk_size):
        stop = min(start + chunk_size, num)
        probs, y0, x0 = _paste_chunk(masks[start:stop], boxes[start:stop], height, width)
        h, w = probs.shape[-2:]
        out[start:stop, y0 : y0 + h, x0 : x0 + w] = probs >= threshold
    return out
