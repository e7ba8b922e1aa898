"""Opening a model by name or local path as a backend."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .backends.diffusers_backend import DiffusersBackend

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOY_MODEL = "toy"


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use fp32, fp16 or bf16") from None


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch build sees no CUDA GPU; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but MPS is not available here; use --device cpu")
    return dev


def open_backend(model: str = TOY_MODEL, device: str = "cpu", dtype: str = "fp32") -> DiffusersBackend:
    """``toy`` (the shipped toy model) or a local diffusers pipeline folder, as a backend."""
    dev, torch_dtype = check_device(device), parse_dtype(dtype)
    if model == TOY_MODEL:
        from .toy.pipeline import load_toy_pipeline

        return DiffusersBackend(load_toy_pipeline(device=dev, dtype=torch_dtype), arch="toy")
    path = Path(model)
    if not path.exists():
        raise ValueError(f"model {model!r} not found: give 'toy' or the path of a local diffusers pipeline folder")
    if path.is_file():
        raise ValueError(
            f"{model} is a single checkpoint file; this version opens diffusers pipeline folders "
            "(with model_index.json). Convert it with diffusers first."
        )
    if not (path / "model_index.json").exists():
        raise ValueError(f"{model} has no model_index.json: it is not a diffusers pipeline folder")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(path), torch_dtype=torch_dtype, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return DiffusersBackend(pipe.to(dev))
