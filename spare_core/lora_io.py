"""An erasure's adapter as a LoRA file, and back: export, inspect, and apply at a strength."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .adapter import SparseLoRA
from .backend import DiffusionBackend, adaptable_modules
from .config import ErasureConfig
from .lora_file import LoraFileError, load_lora_file, read_safetensors, save_lora_file

SPARE_VERSION = "0.1.0"


def save_adapter(
    path: str | Path,
    adapter: SparseLoRA,
    backend: DiffusionBackend,
    config: ErasureConfig,
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
) -> None:
    """Write ``adapter`` as a kohya LoRA for ``backend``'s architecture, with the erasure config in metadata."""
    metadata = {
        "spare_version": SPARE_VERSION,
        "spare_config": config.to_json(),
        "spare_base_model": config.base_model,
        "spare_concepts": json.dumps([[p.concept, p.surrogate] for p in config.concepts]),
        "spare_modules": json.dumps(adapter.module_names),
    }
    for key, value in (extra or {}).items():
        metadata[f"spare_{key}"] = value if isinstance(value, str) else json.dumps(value)
    save_lora_file(path, adapter.export(), dict(backend.denoiser().config), backend.arch, metadata, dtype=dtype)


def load_adapter(path: str | Path, backend: DiffusionBackend) -> tuple[SparseLoRA, dict[str, str]]:
    """Read a kohya LoRA for ``backend``'s model; raises LoraFileError with what is wrong."""
    denoiser = backend.denoiser()
    weights, metadata = load_lora_file(
        path, list(adaptable_modules(denoiser)), dict(denoiser.config), expected_arch=backend.arch
    )
    return SparseLoRA.from_weights(denoiser, weights), metadata


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors LoRA file (nothing is loaded into a model)."""
    _, metadata = read_safetensors(Path(path))
    return metadata


def config_from_file(path: str | Path) -> ErasureConfig:
    """The erasure configuration a SPARE LoRA file was trained with."""
    metadata = read_metadata(path)
    if "spare_config" not in metadata:
        raise LoraFileError(f"{path} was not made by SPARE (no spare_config in its metadata); cannot re-run it")
    return ErasureConfig.from_json(metadata["spare_config"])
