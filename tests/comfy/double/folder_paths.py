"""Double of ComfyUI ``folder_paths.py``: model folders by kind, and the output/temp/input directories.

``configure(base_dir)`` (called by the test fixture) points everything at a temporary tree.
"""

from __future__ import annotations

import os

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

base_path = ""
models_dir = ""
output_directory = ""
temp_directory = ""
input_directory = ""
#: folder name -> ([paths], extensions), as in ComfyUI
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}

_KINDS = ("checkpoints", "loras", "vae", "text_encoders", "diffusion_models", "embeddings")


def configure(base_dir: str) -> None:
    global base_path, models_dir, output_directory, temp_directory, input_directory
    base_path = base_dir
    models_dir = os.path.join(base_dir, "models")
    output_directory = os.path.join(base_dir, "output")
    temp_directory = os.path.join(base_dir, "temp")
    input_directory = os.path.join(base_dir, "input")
    folder_names_and_paths.clear()
    for kind in _KINDS:
        folder_names_and_paths[kind] = ([os.path.join(models_dir, kind)], set(supported_pt_extensions))
    for d in (output_directory, temp_directory, input_directory, *(p[0][0] for p in folder_names_and_paths.values())):
        os.makedirs(d, exist_ok=True)


def map_legacy(folder_name: str) -> str:
    return {"clip": "text_encoders", "unet": "diffusion_models"}.get(folder_name, folder_name)


def get_output_directory() -> str:
    return output_directory


def get_temp_directory() -> str:
    return temp_directory


def get_input_directory() -> str:
    return input_directory


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    paths, exts = folder_names_and_paths.setdefault(map_legacy(folder_name), ([], set(supported_pt_extensions)))
    if full_folder_path not in paths:
        paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[map_legacy(folder_name)][0][:]


def get_filename_list(folder_name: str) -> list[str]:
    """Files under the kind's folders (recursive, relative, "/"-separated), filtered by extension, sorted."""
    paths, exts = folder_names_and_paths[map_legacy(folder_name)]
    out = set()
    for root in paths:
        for dirpath, _, files in os.walk(root, followlinks=True):
            for f in files:
                if not exts or os.path.splitext(f)[1].lower() in exts:
                    out.add(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def get_full_path(folder_name: str, filename: str) -> str | None:
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for root in folder_names_and_paths[folder_name][0]:
        full = os.path.join(root, filename)
        if os.path.isfile(full):
            return full
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full = get_full_path(folder_name, filename)
    if full is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full


def get_save_image_path(filename_prefix: str, output_dir: str, image_width=0, image_height=0):
    """(full_output_folder, filename, counter, subfolder, filename_prefix), counter after existing files."""
    subfolder, filename = os.path.split(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    os.makedirs(full_output_folder, exist_ok=True)
    counters = []
    for f in os.listdir(full_output_folder):
        stem = os.path.splitext(f)[0]
        if stem.startswith(filename + "_") and stem[len(filename) + 1 :].rstrip("_").isdigit():
            counters.append(int(stem[len(filename) + 1 :].rstrip("_")))
    return full_output_folder, filename, max(counters, default=0) + 1, subfolder, filename_prefix
