"""Read and write LoRA files in kohya layout, the one Automatic1111, ComfyUI and diffusers all load.

Per adapted module ``<layer>`` (see :mod:`.lora_naming`) the file holds exactly
``<layer>.lora_down.weight`` [r, in] (conv: [r, in, kh, kw]), ``<layer>.lora_up.weight``
[out, r] (conv: [out, r, 1, 1]) and ``<layer>.alpha`` (scalar); the update is
``(alpha / r) * up @ down``. Anything else a host would report as "lora key not
loaded", so everything else goes into string metadata (DESIGN.md section 4).
Files are read with safetensors only: never pickle.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .fileio import save_safetensors
from .lora_naming import (
    default_naming,
    diffusers_to_compvis,
    kohya_layer_table,
    lookup_kohya_layer,
    to_kohya_key,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"
DOWN, UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"

#: kohya's ``ss_base_model_version`` per architecture (sd-scripts train_network / sdxl_train_util).
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "toy": "spare_toy"}
_ARCH_NAMES = {
    "sd1": "Stable Diffusion 1.x",
    "sd2": "Stable Diffusion 2.x",
    "sdxl": "SDXL",
    "toy": "the SPARE toy model",
}
_RESERVED_KEYS = {
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_base_model_version",
    "ss_v2",
    "spare_format_version",
    "spare_arch",
}
_MAX_LISTED = 5


class LoraFileError(ValueError):
    """A LoRA file that cannot be used with this model; the message says why."""


@dataclass
class LoraModuleWeights:
    """One module's LoRA: ``down`` [r, in] or [r, in, kh, kw], ``up`` [out, r] or [out, r, 1, 1]."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora_delta(weights: LoraModuleWeights) -> torch.Tensor:
    """The full weight update ``(alpha / r) * up @ down``, shaped like the module's weight (at least float32)."""
    dtype = torch.promote_types(weights.down.dtype, torch.float32)
    down = weights.down.to(dtype).flatten(1)
    up = weights.up.to(dtype).flatten(1)
    delta = weights.scale * (up @ down)
    if weights.down.dim() == 4:
        return delta.reshape(up.shape[0], *weights.down.shape[1:])
    return delta


def _check_shapes(name: str, w: LoraModuleWeights) -> None:
    down, up = w.down, w.up
    if down.dim() not in (2, 4):
        raise ValueError(f"{name}: lora_down must be 2-D (linear) or 4-D (conv), got shape {tuple(down.shape)}")
    if up.dim() != down.dim() or (up.dim() == 4 and tuple(up.shape[2:]) != (1, 1)):
        raise ValueError(
            f"{name}: lora_up must be [out, r] for a linear or [out, r, 1, 1] for a conv down {tuple(down.shape)}, "
            f"got {tuple(up.shape)}"
        )
    if down.shape[0] < 1:
        raise ValueError(f"{name}: rank is 0 (lora_down has shape {tuple(down.shape)})")
    if up.shape[1] != down.shape[0]:
        raise ValueError(f"{name}: rank of lora_down ({down.shape[0]}) and lora_up ({up.shape[1]}) differ")


def _file_metadata(modules: Mapping[str, LoraModuleWeights], arch: str, metadata: Mapping[str, str]) -> dict[str, str]:
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise TypeError(
                f"metadata {key!r} must be a str (safetensors metadata is text), got {type(value).__name__}"
            )
        if key in _RESERVED_KEYS:
            raise ValueError(f"metadata {key!r} is written by save_lora_file itself")
        if not key.startswith(("spare_", "ss_")):
            raise ValueError(f"metadata {key!r} should start with 'spare_' (our keys) or 'ss_' (kohya's)")
    alphas = {float(w.alpha) for w in modules.values()}
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(w.rank for w in modules.values())),
        # kohya writes "Dynamic" when modules differ (networks/resize_lora.py)
        "ss_network_alpha": str(alphas.pop()) if len(alphas) == 1 else "Dynamic",
        "ss_base_model_version": BASE_MODEL_VERSION[arch],
        "ss_v2": str(arch == "sd2"),
        "spare_format_version": FORMAT_VERSION,
        "spare_arch": arch,
        **metadata,
    }


def save_lora_file(
    path: str | Path,
    modules: Mapping[str, LoraModuleWeights],
    unet_config: Mapping[str, Any],
    arch: str,
    metadata: Mapping[str, str],
    dtype: torch.dtype = torch.float16,
) -> None:
    """Write ``modules`` (keyed by diffusers module name) as a kohya-layout LoRA, atomically.

    Layer names use kohya's spelling for ``arch`` (:func:`.lora_naming.default_naming`).
    ``alpha`` is always written, as a float32 scalar so that its value is exact.
    """
    if arch not in BASE_MODEL_VERSION:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(BASE_MODEL_VERSION)}")
    if not modules:
        raise ValueError("no LoRA modules to save")
    naming = default_naming(arch)
    tensors: dict[str, torch.Tensor] = {}
    for name, w in modules.items():
        _check_shapes(name, w)
        layer = to_kohya_key(diffusers_to_compvis(name, unet_config) if naming == "compvis" else name)
        if f"{layer}.{DOWN}" in tensors:
            raise ValueError(f"two modules map to the same layer name {layer!r}")
        tensors[f"{layer}.{DOWN}"] = w.down.detach().to(dtype)
        tensors[f"{layer}.{UP}"] = w.up.detach().to(dtype)
        tensors[f"{layer}.{ALPHA}"] = torch.tensor(float(w.alpha), dtype=torch.float32)
    save_safetensors(tensors, path, metadata=_file_metadata(modules, arch, metadata))
    logger.info("saved LoRA with %d modules (%s naming) to %s", len(modules), naming, path)


# ---------------------------------------------------------------- loading


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the string metadata of a safetensors file, with a clear error for anything else."""
    if not path.is_file():
        raise LoraFileError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError, or OSError / ValueError
        raise LoraFileError(
            f"{path} is not a readable safetensors file ({e}). LoRAs must be .safetensors; "
            "pickled .pt/.ckpt files are not loaded"
        ) from e
    return tensors, metadata


def _arch_of(metadata: Mapping[str, str]) -> str | None:
    """The architecture a file says it is for: ``spare_arch``, else kohya's ``ss_base_model_version``/``ss_v2``."""
    if metadata.get("spare_arch"):
        return metadata["spare_arch"]
    version = metadata.get("ss_base_model_version", "")
    for arch, prefix in (("sdxl", "sdxl"), ("sd2", "sd_v2"), ("sd1", "sd_v1"), ("toy", "spare_toy")):
        if version.startswith(prefix):
            return arch
    if version:
        logger.warning("unrecognised ss_base_model_version %r; not checking the architecture", version)
        return None
    return "sd2" if metadata.get("ss_v2") == "True" else None


def _check_arch(path: Path, metadata: Mapping[str, str], expected_arch: str | None) -> None:
    file_arch = _arch_of(metadata)
    if expected_arch is None or file_arch is None or file_arch == expected_arch:
        return
    raise LoraFileError(
        f"{path.name} is a LoRA for {_ARCH_NAMES.get(file_arch, file_arch)} ({file_arch!r}), "
        f"but the model is {_ARCH_NAMES.get(expected_arch, expected_arch)} ({expected_arch!r})"
    )


def _describe_extra(key: str) -> str:
    """What a tensor that is not a kohya LoRA down/up/alpha probably is, for the error message."""
    layer, _, part = key.partition(".")
    if layer.startswith(("lora_te_", "lora_te1_", "lora_te2_")):
        return "a text-encoder LoRA layer (SPARE LoRAs change the UNet only)"
    if "lora_A" in key or "lora_B" in key or ".lora.down." in key or ".lora.up." in key:
        return "a PEFT/diffusers-style weight (not kohya layout)"
    if "dora_scale" in part:
        return "a DoRA magnitude (dora_scale), not plain LoRA"
    if "hada_" in part:
        return "a LoHa weight, not plain LoRA"
    if "lokr_" in part:
        return "a LoKr weight, not plain LoRA"
    if "lora_mid" in part:
        return "a LoCon/Tucker mid weight, not plain LoRA"
    if key.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")):
        return "a full model weight (the file looks like a checkpoint, not a LoRA)"
    if part.endswith(("diff", "diff_b")) or (key.endswith((".weight", ".bias")) and "lora" not in key):
        return "a full weight or bias (checkpoint or diff), not a LoRA factor"
    return "an unrecognised tensor"


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _group(path: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group keys by layer, splitting at the first ``.`` as Automatic1111 and diffusers do."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    extras: list[str] = []
    for key, tensor in tensors.items():
        layer, _, part = key.partition(".")
        if part in (DOWN, UP, ALPHA) and not layer.startswith("lora_te"):
            layers.setdefault(layer, {})[part] = tensor
        else:
            extras.append(key)
    if not any(key.partition(".")[2] in (DOWN, UP) for key in tensors):
        found = f"; it holds e.g. {extras[0]!r}: {_describe_extra(extras[0])}" if extras else " (it holds no tensors)"
        raise LoraFileError(
            f"{path.name} is not a LoRA file: no '<layer>.lora_down.weight' / '.lora_up.weight' pairs{found}"
        )
    if extras:
        described = [f"{k!r} ({_describe_extra(k)})" for k in sorted(extras)]
        raise LoraFileError(
            f"{path.name} holds {len(extras)} tensor(s) that are not kohya LoRA down/up/alpha: {_listed(described)}"
        )
    return layers


def _module_weights(path: Path, layer: str, parts: Mapping[str, torch.Tensor]) -> LoraModuleWeights:
    if DOWN not in parts or UP not in parts:
        have = ", ".join(sorted(parts))
        missing = UP if DOWN in parts else DOWN
        raise LoraFileError(f"{path.name}: layer {layer!r} has {have} but no {missing}")
    down, up = parts[DOWN].float(), parts[UP].float()
    w = LoraModuleWeights(down=down, up=up, alpha=float(down.shape[0]))
    try:
        _check_shapes(layer, w)
    except ValueError as e:
        raise LoraFileError(f"{path.name}: {e}") from None
    if ALPHA in parts:
        alpha = parts[ALPHA]
        if alpha.numel() != 1:
            raise LoraFileError(f"{path.name}: alpha of {layer!r} must be a scalar, got shape {tuple(alpha.shape)}")
        w.alpha = float(alpha.item())
    # no alpha: scale 1, i.e. alpha = rank, as ComfyUI (comfy/weight_adapter/lora.py) and A1111 do
    return w


def _resolve_all(
    path: Path, layers: Mapping[str, Any], unet_module_names: Sequence[str], unet_config: Mapping[str, Any]
) -> dict[str, str]:
    table = kohya_layer_table(unet_module_names, unet_config)
    resolved: dict[str, str] = {}
    unknown: list[str] = []
    for layer in layers:
        try:
            resolved[layer] = lookup_kohya_layer(layer, table)
        except ValueError:
            unknown.append(layer)
    if unknown:
        raise LoraFileError(
            f"{path.name}: {len(unknown)} layer(s) match no module of this UNet: {_listed(sorted(unknown))}. "
            "Is the LoRA for another model?"
        )
    seen: dict[str, str] = {}
    for layer, module in resolved.items():
        if seen.setdefault(module, layer) != layer:
            raise LoraFileError(f"{path.name}: layers {seen[module]!r} and {layer!r} both name module {module!r}")
    return resolved


def load_lora_file(
    path: str | Path,
    unet_module_names: Sequence[str],
    unet_config: Mapping[str, Any],
    expected_arch: str | None,
) -> tuple[dict[str, LoraModuleWeights], dict[str, str]]:
    """Read a kohya-layout LoRA (diffusers or CompVis layer names) for a UNet with these module names.

    Returns the modules keyed by diffusers module name, as float32, and the file's metadata.
    Raises :class:`LoraFileError` with a message that says what is wrong with the file.
    """
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    _check_arch(path, metadata, expected_arch)
    layers = _group(path, tensors)
    weights = {layer: _module_weights(path, layer, parts) for layer, parts in layers.items()}
    names = _resolve_all(path, layers, unet_module_names, unet_config)
    logger.info("loaded LoRA %s: %d modules", path.name, len(weights))
    return {names[layer]: w for layer, w in weights.items()}, metadata
