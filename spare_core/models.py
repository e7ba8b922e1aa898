"""Opening a model by name or local path as a backend.

This is the one engine module that knows the toy model by name: ``toy`` opens
the shipped toy pipeline with its own prompt domain. Everything else is a
local file or folder; nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .backends.diffusers_backend import DiffusersBackend

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOY_MODEL = "toy"


class ModelError(ValueError):
    """A model that cannot be opened; the message says what to change."""


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelError(f"unknown dtype {name!r}; use fp32, fp16 or bf16") from None


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but this torch build sees no CUDA GPU; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError("device 'mps' asked for, but MPS is not available here; use --device cpu")
    return dev


def open_model(model: str = TOY_MODEL, device: str = "cpu", dtype: str = "fp32") -> DiffusersBackend:
    """``toy`` (the shipped toy model) or a local diffusers pipeline folder, as a backend."""
    dev, torch_dtype = check_device(device), parse_dtype(dtype)
    if model == TOY_MODEL:
        from .toy.pipeline import ToyWeightsError, load_toy_backend

        try:
            return load_toy_backend(device=dev, dtype=torch_dtype)
        except ToyWeightsError as exc:
            raise ModelError(str(exc)) from exc
    path = Path(model)
    if not path.exists():
        raise ModelError(f"model {model!r} not found: give 'toy' or the path of a local diffusers pipeline folder")
    if path.is_file():
        raise ModelError(
            f"{model} is a single checkpoint file; this version opens diffusers pipeline folders "
            "(with model_index.json). Convert it with diffusers first."
        )
    index = path / "model_index.json"
    if not index.exists():
        raise ModelError(f"{model} has no model_index.json: it is not a diffusers pipeline folder")
    _refuse_known_misfits(path, index)
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(path),
            torch_dtype=torch_dtype,
            local_files_only=True,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except Exception as exc:  # diffusers raises OSError, ValueError, EnvironmentError... for a bad folder
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"could not open {model} as a Stable Diffusion pipeline folder ({first_line}); "
            "check that every component folder holds its config and weights"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return DiffusersBackend(pipe.to(dev))


def _refuse_known_misfits(path: Path, index: Path) -> None:
    """Clear messages for folders that are pipelines, but not ones this opener handles."""
    try:
        components = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{index} is not readable JSON ({exc}); is the folder complete?") from exc
    vae = components.get("vae") or [None, None]
    if isinstance(vae, list) and len(vae) == 2 and vae[1] == "PixelShuffleVAE":
        raise ModelError(f"{path} is a saved copy of the toy model; open the shipped one with --model toy")
    name = components.get("_class_name", "")
    if name and name not in ("StableDiffusionPipeline",):
        raise ModelError(f"{path} holds a {name}; this version opens StableDiffusionPipeline folders (SD 1.x, 2.x)")
