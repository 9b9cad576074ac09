"""Paste ``S x S`` box-relative mask probabilities into full images (paper §4.1).

Detectron2's ``_do_paste_mask`` idea: for every image pixel ``(i, j)`` (centre
``(j + 0.5, i + 0.5)``) and every instance with box ``(x1, y1, x2, y2)``, the pixel's
position in the box, normalised to ``[-1, 1]``, is

    gx = (j + 0.5 - x1) / (x2 - x1) * 2 - 1,    gy = (i + 0.5 - y1) / (y2 - y1) * 2 - 1,

and ``F.grid_sample(mask, grid, align_corners=False)`` interpolates the mask there
bilinearly (zero outside the box). Then the probability is thresholded.

The sampling grid is separable: a pixel's ``gx`` depends on its column only and ``gy``
on its row only, so bilinear interpolation with zero padding is two matrix products,
``probs = W_y @ mask @ W_x^T``, with ``W_x`` ``(w, S)`` and ``W_y`` ``(h, S)`` holding each
pixel's two bilinear weights (taps outside the mask weigh zero, as ``grid_sample``'s
zero padding). That is ``F.grid_sample``'s result without its ``(n, h, w, 2)`` grid in
memory, from two small batched matrix products.

Memory and work: instances are processed in chunks; each chunk samples only the
rectangle of the image covered by the union of its boxes (clamped to the image,
widened by 1 px for the bilinear fringe) and writes it into a zero ``(n, H, W)`` bool
output. Chunks of one (on CPU, the default) keep the work proportional to the boxes'
areas instead of ``n * H * W``, at the price of one Python iteration per instance, which
does one matrix product and one write: the bilinear weights and the row interpolation
are computed for 64 instances at a time over the whole image height and width
(``(64, H, S)``, a few MB). On a GPU the kernel-launch overhead dominates, so large
chunks (bounded by a memory budget) are used and the union rectangle is usually most of
the image.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Bytes per sampled pixel assumed when sizing GPU chunks (probability 4 B, mask 1 B, slack).
_BYTES_PER_PIXEL = 8
#: Memory budget of one GPU chunk.
_GPU_CHUNK_BYTES = 1 << 30
#: Instances whose weights are computed together when pasting one at a time (CPU).
_EACH_BLOCK = 64


def _default_chunk_size(device: torch.device, height: int, width: int) -> int:
    if device.type == "cpu":
        return 1
    return max(1, _GPU_CHUNK_BYTES // max(1, height * width * _BYTES_PER_PIXEL))


def bilinear_weights(pos: Tensor, size: int) -> Tensor:
    """``(c, n)`` positions on a length-``size`` axis, in tap units (tap ``k`` centred at
    ``k``) -> ``(c, n, size)`` bilinear weights ``max(0, 1 - |pos - k|)``: the two taps
    around ``pos`` share its weight, and taps past either end do not exist, which is
    ``grid_sample``'s zero padding."""
    taps = torch.arange(size, device=pos.device, dtype=pos.dtype)  # (size,)
    return (1 - (pos[..., None] - taps).abs()).clamp(min=0)  # (c, n, size)


def _paste_chunk(masks: Tensor, boxes: Tensor, height: int, width: int) -> tuple[Tensor, int, int]:
    """Interpolated probabilities of ``c`` masks over the union rectangle of their boxes.

    Returns:
        ``(c, h, w)`` float probabilities and the rectangle's top-left ``(y0, x0)``.
    """
    lows = boxes[:, :2].amin(0)  # (2,) x, y
    highs = boxes[:, 2:].amax(0)  # (2,)
    bx0, by0, bx1, by1 = torch.cat([lows, highs]).tolist()  # one sync for the rectangle
    x0 = max(int(math.floor(bx0)) - 1, 0)
    y0 = max(int(math.floor(by0)) - 1, 0)
    x1 = min(int(math.ceil(bx1)) + 1, width)
    y1 = min(int(math.ceil(by1)) + 1, height)
    num, size_y, size_x = masks.shape
    if x1 <= x0 or y1 <= y0:  # every box lies outside the image
        return masks.new_zeros((num, 0, 0)), 0, 0
    box_x1, box_y1, box_x2, box_y2 = boxes.unbind(dim=1)  # (c,) each
    img_x = torch.arange(x0, x1, device=masks.device, dtype=masks.dtype) + 0.5  # (w,)
    img_y = torch.arange(y0, y1, device=masks.device, dtype=masks.dtype) + 0.5  # (h,)
    # pixel centre -> mask position in tap units: (g + 1) * S / 2 - 0.5 for the grid
    # coordinate g above, i.e. grid_sample's unnormalisation with align_corners=False
    bw = (box_x2 - box_x1).clamp(min=1e-6)[:, None]  # (c, 1); degenerate boxes sample nothing
    bh = (box_y2 - box_y1).clamp(min=1e-6)[:, None]  # (c, 1)
    pos_x = (img_x[None, :] - box_x1[:, None]) / bw * size_x - 0.5  # (c, w)
    pos_y = (img_y[None, :] - box_y1[:, None]) / bh * size_y - 0.5  # (c, h)
    weights_x = bilinear_weights(pos_x, size_x)  # (c, w, S_x)
    weights_y = bilinear_weights(pos_y, size_y)  # (c, h, S_y)
    rows = torch.bmm(weights_y, masks)  # (c, h, S_x): mask rows interpolated to image rows
    probs = torch.bmm(rows, weights_x.transpose(1, 2))  # (c, h, w)
    return probs, y0, x0


def _paste_each(masks: Tensor, boxes: Tensor, out: Tensor, threshold: float) -> None:
    """Chunks of one instance, each over its own box: the bilinear weights and the mask
    rows interpolated to image rows for a block of instances at once (over the image's
    whole width and height, ``(c, W, S)`` and ``(c, H, S)``: small), then per instance one
    matrix product over its rectangle, thresholded into ``out`` ``(n, H, W)``."""
    num, size_y, size_x = masks.shape
    height, width = out.shape[-2:]
    img_x = torch.arange(width, device=masks.device, dtype=masks.dtype) + 0.5  # (W,)
    img_y = torch.arange(height, device=masks.device, dtype=masks.dtype) + 0.5  # (H,)
    # each box's rectangle, widened by 1 px for the bilinear fringe and clamped, at once
    lows = (boxes[:, :2].floor() - 1).clamp(min=0)  # (n, 2) x0, y0
    highs = torch.minimum(boxes[:, 2:].ceil() + 1, boxes.new_tensor([width, height]))
    rects = torch.cat([lows, highs], dim=1).long().tolist()  # (n, 4): one sync
    for start in range(0, num, _EACH_BLOCK):
        block = slice(start, min(start + _EACH_BLOCK, num))
        box_x1, box_y1, box_x2, box_y2 = boxes[block].unbind(dim=1)  # (c,) each
        bw = (box_x2 - box_x1).clamp(min=1e-6)[:, None]  # (c, 1)
        bh = (box_y2 - box_y1).clamp(min=1e-6)[:, None]  # (c, 1)
        pos_x = (img_x[None, :] - box_x1[:, None]) / bw * size_x - 0.5  # (c, W)
        pos_y = (img_y[None, :] - box_y1[:, None]) / bh * size_y - 0.5  # (c, H)
        weights_x = bilinear_weights(pos_x, size_x)  # (c, W, S_x)
        rows = torch.bmm(bilinear_weights(pos_y, size_y), masks[block])  # (c, H, S_x)
        for i, (x0, y0, x1, y1) in enumerate(rects[block], start=start):
            if x1 > x0 and y1 > y0:
                probs = rows[i - start, y0:y1] @ weights_x[i - start, x0:x1].T  # (h, w)
                out[i, y0:y1, x0:x1] = probs >= threshold


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
    if chunk_size == 1:
        _paste_each(masks, boxes, out, threshold)
        return out
    for start in range(0, num, chunk_size):
        stop = min(start + chunk_size, num)
        probs, y0, x0 = _paste_chunk(masks[start:stop], boxes[start:stop], height, width)
        h, w = probs.shape[-2:]
        out[start:stop, y0 : y0 + h, x0 : x0 + w] = probs >= threshold
    return out
