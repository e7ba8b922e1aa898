"""Double of ComfyUI ``comfy_api/latest/_ui.py``: PreviewImage writes PNGs to the temp folder."""

from __future__ import annotations

import os
import random

import folder_paths
import numpy as np
from PIL import Image

from ._io import _UIOutput


class SavedResult(dict):
    def __init__(self, filename: str, subfolder: str, type: str):
        super().__init__(filename=filename, subfolder=subfolder, type=type)

    @property
    def filename(self) -> str:
        return self["filename"]

    @property
    def subfolder(self) -> str:
        return self["subfolder"]

    @property
    def type(self) -> str:
        return self["type"]


class SavedImages(_UIOutput):
    def __init__(self, results: list[SavedResult], is_animated: bool = False):
        self.results = results
        self.is_animated = is_animated

    def as_dict(self) -> dict:
        data = {"images": self.results}
        if self.is_animated:
            data["animated"] = (True,)
        return data


def _save_images(images, filename_prefix: str, folder: str, folder_type: str) -> list[SavedResult]:
    full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, folder)
    results = []
    for batch_number, image in enumerate(images):
        array = np.clip(255.0 * image.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        Image.fromarray(array).save(os.path.join(full_folder, name), compress_level=1)
        results.append(SavedResult(name, subfolder, folder_type))
        counter += 1
    return results


class PreviewImage(_UIOutput):
    """Images [N, H, W, C] in [0, 1] saved as temp PNGs for the node's preview."""

    def __init__(self, image, animated: bool = False, cls=None, **kwargs):
        prefix = "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        self.values = _save_images(image, prefix, folder_paths.get_temp_directory(), "temp")
        self.animated = animated

    def as_dict(self):
        return {"images": self.values, "animated": (self.animated,)}
