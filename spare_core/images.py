"""Pictures for people: tensors to PIL images, and labelled grids sized from the images themselves."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw

#: Grids upscale small images (the toy model's 32 px) to cells of at least this many pixels.
MIN_CELL = 128


def to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """One [3, H, W] image in [-1, 1] as a PIL image, upscaled ``scale`` times without smoothing."""
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    pil = Image.fromarray(array)
    if scale != 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    return pil


def grid_image(
    images: torch.Tensor,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    scale: int | None = None,
    marks: torch.Tensor | None = None,
) -> Image.Image:
    """A labelled grid of images (row-major); ``marks`` (bool per image) draws a red frame.

    Cells are as large as the images times ``scale``; by default small images
    are upscaled to at least :data:`MIN_CELL` pixels and large ones kept at
    their own size.
    """
    rows, cols = len(row_labels), len(col_labels)
    if len(images) != rows * cols:
        raise ValueError(f"{len(images)} images do not fill a {rows} x {cols} grid")
    height, width = int(images.shape[-2]), int(images.shape[-1])
    if scale is None:
        scale = max(1, MIN_CELL // max(height, width))
    cell_w, cell_h = width * scale, height * scale
    left, top, pad = 150, 18, 2
    canvas = Image.new("RGB", (left + cols * (cell_w + pad), top + rows * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(col_labels):
        draw.text((left + c * (cell_w + pad) + 4, 3), label, fill="black")
    for r, label in enumerate(row_labels):
        lines = textwrap.wrap(label, 22)[: max(1, cell_h // 12)] or [""]
        y0 = top + r * (cell_h + pad) + cell_h // 2 - 6 * len(lines)
        for k, line in enumerate(lines):
            draw.text((4, y0 + 12 * k), line, fill="black")
        for c in range(cols):
            x, y = left + c * (cell_w + pad), top + r * (cell_h + pad)
            canvas.paste(to_pil(images[r * cols + c], scale), (x, y))
            if marks is not None and bool(marks[r * cols + c]):
                draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], outline="red", width=2)
    return canvas


def fit_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, 3, H, W]`` images centre-cropped to a square and resized to ``size`` px (as user folders are)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W], got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = images[..., top : top + side, left : left + side].float()
    if side == size:
        return square
    return torch.nn.functional.interpolate(square, size=(size, size), mode="bicubic", antialias=True).clamp(-1, 1)
