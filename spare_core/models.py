"""Opening a model by name or local path as a backend.

This is the one engine module that knows the toy model by name: ``toy`` opens
the shipped toy pipeline with its own prompt domain. Everything else is a
local file or folder; nothing is downloaded:

- a single-file ``.safetensors`` checkpoint (SD 1.x, SD 2.x, SDXL base, in the
  original layout ComfyUI and Automatic1111 keep): detected from its tensor
  names and shapes (``checkpoint_detect``) and built offline from shipped
  configs (``single_file``);
- a diffusers pipeline folder (``model_index.json``): ``StableDiffusionPipeline``
  or ``StableDiffusionXLPipeline``.

The backend is chosen by the pipeline's class: ``DiffusersBackend`` for SD 1.x /
2.x, ``SDXLBackend`` (imported when needed) for SDXL.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .backends.diffusers_backend import DiffusersBackend

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOY_MODEL = "toy"
OPENABLE_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


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


def open_model(model: str = TOY_MODEL, device: str = "cpu", dtype: str = "fp32") -> Any:
    """``toy`` (the shipped toy model), a local ``.safetensors`` checkpoint or a diffusers pipeline folder.

    Returns a backend (``DiffusersBackend`` for SD 1.x/2.x, ``SDXLBackend`` for SDXL). Raises
    :class:`ModelError` with one line saying what was found and what to change.
    """
    dev, torch_dtype = check_device(device), parse_dtype(dtype)
    if model == TOY_MODEL:
        from .toy.pipeline import ToyWeightsError, load_toy_backend

        try:
            return load_toy_backend(device=dev, dtype=torch_dtype)
        except ToyWeightsError as exc:
            raise ModelError(str(exc)) from exc
    path = Path(model)
    if not path.exists():
        raise ModelError(
            f"model {model!r} not found: give 'toy', a .safetensors checkpoint file "
            "or a local diffusers pipeline folder"
        )
    if path.is_file():
        loaded = _open_checkpoint_file(path, torch_dtype)
        return backend_for(loaded.pipe.to(dev), arch=loaded.detected.arch)
    index = path / "model_index.json"
    if not index.exists():
        raise ModelError(f"{model} has no model_index.json: it is not a diffusers pipeline folder")
    class_name = _refuse_known_misfits(path, index)
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if class_name == "StableDiffusionXLPipeline" else StableDiffusionPipeline
    extra = {} if cls is StableDiffusionXLPipeline else {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipe = cls.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True, **extra)
    except Exception as exc:  # diffusers raises OSError, ValueError, EnvironmentError... for a bad folder
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"could not open {model} as a {cls.__name__} folder ({first_line}); "
            "check that every component folder holds its config and weights"
        ) from exc
    pipe.set_progress_bar_config(disable=True)
    return backend_for(pipe.to(dev))


def backend_for(pipe: Any, arch: str | None = None) -> Any:
    """The backend for a diffusers pipeline, chosen by its class (SDXL's backend is imported only when needed).

    ``arch``: the architecture when the caller knows it (a checkpoint's key names); else the backend decides.
    """
    from diffusers import StableDiffusionXLPipeline

    if isinstance(pipe, StableDiffusionXLPipeline):
        from .backends.sdxl_backend import SDXLBackend

        return SDXLBackend(pipe, arch="sdxl")
    return DiffusersBackend(pipe, arch=arch)


def _open_checkpoint_file(path: Path, torch_dtype: torch.dtype) -> Any:
    """A single-file checkpoint as a ``LoadedCheckpoint`` (pipeline and what was detected).

    Every refusal becomes a one-line :class:`ModelError`.
    """
    from .checkpoint_detect import UnsupportedCheckpoint
    from .single_file import load_checkpoint

    try:
        loaded = load_checkpoint(path, torch_dtype=torch_dtype)
    except UnsupportedCheckpoint as exc:
        raise ModelError(str(exc)) from exc
    except Exception as exc:  # diffusers / transformers errors while building the pipeline
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"could not build a pipeline from {path.name} ({first_line})") from exc
    logger.info("opened %s as %s (%s)", path.name, loaded.detected.family, loaded.prediction_type)
    return loaded


def _refuse_known_misfits(path: Path, index: Path) -> str:
    """Clear messages for folders that are pipelines, but not ones this opener handles; returns the class name."""
    try:
        components = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{index} is not readable JSON ({exc}); is the folder complete?") from exc
    vae = components.get("vae") or [None, None]
    if isinstance(vae, list) and len(vae) == 2 and vae[1] == "PixelShuffleVAE":
        raise ModelError(f"{path} is a saved copy of the toy model; open the shipped one with --model toy")
    name = components.get("_class_name", "")
    if name and name not in OPENABLE_PIPELINES:
        raise ModelError(
            f"{path} holds a {name}; SPARE opens StableDiffusionPipeline (SD 1.x, 2.x) "
            "and StableDiffusionXLPipeline (SDXL base) folders"
        )
    return name or "StableDiffusionPipeline"
