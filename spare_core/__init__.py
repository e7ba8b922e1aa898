"""SPARE: erase a concept from a text-to-image diffusion model with a sparse LoRA trained by self-distillation.

The public API is the names in ``__all__``; ``docs/architecture.md`` documents
each of them. The command line, the demo, the benchmarks, the ComfyUI nodes
and the app use only these names. They are imported on first use, so that
``import spare_core`` stays cheap and importing one module (say the settings)
does not pull in torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # models and the backend contract
    "open_model": "models",
    "ModelError": "models",
    "DiffusionBackend": "backend",
    "Conditioning": "backend",
    "Architecture": "architectures",
    "register_architecture": "architectures",
    "get_architecture": "architectures",
    # settings
    "ErasureConfig": "config",
    "ConceptPair": "config",
    "Setting": "config",
    "SETTINGS": "config",
    "SettingsError": "config",
    "pair_concepts": "config",
    "describe_error": "errors",
    # prompt domains
    "Domain": "domain",
    "GenericDomain": "domain",
    # events and cancel
    "Event": "events",
    "CancelToken": "events",
    "ErasureCancelled": "events",
    "STAGES": "events",
    # the stages
    "prepare_sets": "erasure",
    "measure_profile": "erasure",
    "select_modules": "erasure",
    "train": "erasure",
    "erase": "erasure",
    "ErasureSets": "erasure",
    "TrainedAdapter": "erasure",
    "ErasureResult": "erasure",
    "StageMismatch": "erasure",
    "TimestepProfile": "timesteps",
    "Saliency": "saliency",
    "TrainingDiverged": "trainer",
    "SparseLoRA": "adapter",
    # the LoRA in memory
    "Lora": "lora",
    "build_lora": "lora",
    "lora_from_adapter": "lora",
    "read_lora": "lora",
    "LoraFileError": "lora_file",
    # previews, pictures and files
    "generate_images": "previews",
    "preview": "previews",
    "Preview": "previews",
    "grid_image": "images",
    "to_pil": "images",
    "load_images": "image_folder",
    "plot_profile": "timesteps",
    "plot_saliency": "saliency",
    "plot_losses": "plotting",
    "save_png": "fileio",
    "write_json": "fileio",
    "write_text": "fileio",
    # weights published as pickles
    "convert_to_safetensors": "convert",
    "ConversionError": "convert",
    # rates with intervals
    "wilson_interval": "stats",
    "proportion": "stats",
    "paired_bootstrap": "stats",
    # the UnlearnCanvas protocol
    "evaluate_unlearncanvas": "evaluation.unlearncanvas",
    "UnlearnCanvasProtocol": "evaluation.unlearncanvas",
    # evaluation (the toy world's harness) and the baselines
    "evaluate_edit": "toy.harness",
    "BaseGrids": "toy.harness",
    "report_markdown": "toy.harness",
    "plot_prompt_matrix": "toy.harness",
    "load_edit": "weight_delta",
    "WeightDelta": "weight_delta",
    "run_baseline": "baselines.methods",
    "BASELINES": "baselines.methods",
    "BaselineResult": "baselines.methods",
    # many erasures over processes and devices
    "load_jobs": "batch",
    "parse_jobs": "batch",
    "JOB_HASH_KEY": "batch",
    "run_batch": "batch",
    "gather_batch": "batch",
    "erasure_worker": "batch",
    "ProcessInfo": "batch",
    "BatchJob": "batch",
    "BatchError": "batch",
}

__all__ = sorted(_EXPORTS)
# A public name that is also a submodule's name would be shadowed by the submodule once imported.
assert not set(_EXPORTS) & set(_EXPORTS.values()), "rename the module or the name"


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'spare_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
