"""User-supplied forget/retain images: a folder of pictures, read with Pillow only.

Every image is converted to RGB, centre-cropped to a square and resized to the
model's resolution. Files are taken in name order so that a run is
reproducible; each image is paired with the prompts of its set in turn
(image ``i`` with prompt ``i mod len(prompts)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_files(folder: str | Path) -> list[Path]:
    """The image files of ``folder`` in name order; a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found: give a folder of PNG or JPEG images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): add some")
    return files


def _square(image: Image.Image, size: int) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


def load_images(paths: Sequence[str | Path], size: int) -> torch.Tensor:
    """Image files as ``[N, 3, size, size]`` in [-1, 1], each centre-cropped to a square and resized."""
    if not paths:
        raise ValueError("no images given: add at least one PNG or JPEG image")
    tensors = []
    for path in paths:
        try:
            with Image.open(path) as image:
                rgb = _square(image.convert("RGB"), size)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot read image {Path(path).name} ({exc}); remove it or save it as PNG") from exc
        array = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
        tensors.append(torch.from_numpy(array).permute(2, 0, 1))
    return torch.stack(tensors)


def load_image_folder(folder: str | Path, size: int) -> torch.Tensor:
    """The images of ``folder`` (in name order) as ``[N, 3, size, size]`` in [-1, 1]."""
    return load_images(image_files(folder), size)


def round_robin_index(count: int, prompts: int) -> torch.Tensor:
    """Image ``i`` goes with prompt ``i mod prompts``."""
    return torch.arange(count) % prompts
