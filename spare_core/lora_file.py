"""Read and write LoRA files in kohya layout, the one Automatic1111, ComfyUI and diffusers all load.

Per adapted module ``<layer>`` (see :mod:`.lora_naming`) the file holds exactly
``<layer>.lora_down.weight`` [r, in] (conv: [r, in, kh, kw]), ``<layer>.lora_up.weight``
[out, r] (conv: [out, r, 1, 1]) and ``<layer>.alpha`` (scalar); the update is
``(alpha / r) * up @ down``. Anything else a host would report as "lora key not
loaded", so everything else goes into string metadata. Files are read with
safetensors only (never pickle), and written byte for byte deterministically:
the same tensors and metadata give the same file.

Reading also takes plain kohya LoRAs made by other tools: UNet layers in either
spelling, ``alpha`` optional (missing: alpha = rank, scale 1), conv layers with a
4-D ``lora_down`` (kohya's conv LoRA, "LoCon" without a Tucker core), and
text-encoder layers (``lora_te_*``, ``lora_te1_*``, ``lora_te2_*``), which are
kept apart from the UNet layers. Other adapter formats (LoHa, LoKr, DoRA, LoCon
with ``lora_mid``, OFT, PEFT ``lora_A``/``lora_B``) are refused by name.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .architectures import architecture_from_metadata, get_architecture
from .fileio import write_bytes
from .lora_naming import export_layer_names, kohya_layer_table, lookup_kohya_layer

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"
DOWN, UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"

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


def lora_file_metadata(
    modules: Mapping[str, LoraModuleWeights], arch: str, metadata: Mapping[str, str]
) -> dict[str, str]:
    """kohya's ``ss_*`` keys for ``arch`` plus the caller's ``spare_*``/``ss_*`` string metadata (checked)."""
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
    architecture = get_architecture(arch)
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(w.rank for w in modules.values())),
        # kohya writes "Dynamic" when modules differ (networks/resize_lora.py)
        "ss_network_alpha": str(alphas.pop()) if len(alphas) == 1 else "Dynamic",
        "ss_base_model_version": architecture.base_model_version,
        "ss_v2": str(architecture.v2),
        "spare_format_version": FORMAT_VERSION,
        "spare_arch": arch,
        **metadata,
    }


def lora_file_tensors(
    layers: Mapping[str, LoraModuleWeights], dtype: torch.dtype = torch.float16
) -> dict[str, torch.Tensor]:
    """The kohya-layout tensors of ``layers`` (keyed by kohya layer name).

    ``alpha`` is always written, as a float32 scalar so that its value is exact.
    Non-finite weights are refused: a file a host would load as noise is never made.
    """
    if not layers:
        raise ValueError("no LoRA modules to save")
    tensors: dict[str, torch.Tensor] = {}
    for layer, w in layers.items():
        _check_shapes(layer, w)
        down, up = w.down.detach().to("cpu", dtype), w.up.detach().to("cpu", dtype)
        if not (torch.isfinite(down).all() and torch.isfinite(up).all() and math.isfinite(w.alpha)):
            raise ValueError(f"the LoRA weights of {layer} are not finite (NaN or infinity); nothing was written")
        tensors[f"{layer}.{DOWN}"] = down.contiguous()
        tensors[f"{layer}.{UP}"] = up.contiguous()
        tensors[f"{layer}.{ALPHA}"] = torch.tensor(float(w.alpha), dtype=torch.float32)
    return tensors


_SAFETENSORS_DTYPES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file as bytes, deterministically: tensors and metadata in name order.

    The safetensors library writes metadata in hash-map order, which changes from
    one process to the next; this writer follows the same published layout (an
    8-byte little-endian header length, a JSON header padded with spaces to a
    multiple of 8, then the tensors' little-endian bytes back to back).
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    chunks, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name} has dtype {tensor.dtype}, which this writer does not store")
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def save_lora_file(
    path: str | Path,
    modules: Mapping[str, LoraModuleWeights],
    unet_config: Mapping[str, Any],
    arch: str,
    metadata: Mapping[str, str],
    dtype: torch.dtype = torch.float16,
) -> None:
    """Write ``modules`` (keyed by diffusers module name) as a kohya-layout LoRA, atomically.

    Layer names use kohya's spelling for ``arch`` (see :mod:`.architectures`).
    """
    get_architecture(arch)  # unknown architectures are refused before anything else
    if not modules:
        raise ValueError("no LoRA modules to save")
    names = export_layer_names(list(modules), arch, unet_config)
    layers = {names[name]: w for name, w in modules.items()}
    tensors = lora_file_tensors(layers, dtype)
    write_bytes(path, safetensors_bytes(tensors, lora_file_metadata(layers, arch, metadata)))
    logger.info("saved LoRA with %d modules (%s naming) to %s", len(modules), get_architecture(arch).naming, path)


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
    known = architecture_from_metadata(version) if version else None
    if known is not None:
        return known.key
    if version:
        logger.warning("unrecognised ss_base_model_version %r; not checking the architecture", version)
        return None
    return "sd2" if metadata.get("ss_v2") == "True" else None


def _display_name(arch: str) -> str:
    try:
        return get_architecture(arch).display_name
    except ValueError:
        return arch


def check_lora_arch(path: Path, metadata: Mapping[str, str], expected_arch: str | None) -> None:
    """Raise LoraFileError if the file's metadata names another architecture than ``expected_arch``."""
    file_arch = _arch_of(metadata)
    if expected_arch is None or file_arch is None or file_arch == expected_arch:
        return
    raise LoraFileError(
        f"{path.name} is a LoRA for {_display_name(file_arch)} ({file_arch!r}), "
        f"but the model is {_display_name(expected_arch)} ({expected_arch!r})"
    )


#: Layer-name prefixes of text-encoder LoRA layers in kohya files (SD1/SD2: ``lora_te_``; SDXL: ``lora_te1_``
#: and ``lora_te2_``; kohya sd-scripts ``networks/lora.py`` LORA_PREFIX_TEXT_ENCODER*).
TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_")


def is_text_encoder_layer(layer: str) -> bool:
    """Whether a kohya layer name belongs to a text encoder (``lora_te_``, ``lora_te1_``, ``lora_te2_``)."""
    return layer.startswith(TEXT_ENCODER_PREFIXES)


# Other adapter formats, recognised by their tensor names, and what to call them. The key names are those of
# LyCORIS (KohakuBlueLeaf/LyCORIS ``lycoris/modules/loha.py``, ``lokr.py``, ``locon.py`` with Tucker, and
# ``weight_decompose``/``dora_scale``) and of peft / diffusers (``lora_A``/``lora_B``, ``lora.down``/``lora.up``).
_FOREIGN_FORMATS: tuple[tuple[str, str], ...] = (
    ("hada_", "a LoHa file (hada_* keys)"),
    ("lokr_", "a LoKr file (lokr_* keys)"),
    ("dora_scale", "a DoRA file (dora_scale keys)"),
    ("lora_mid", "a LoCon file with a Tucker core (lora_mid keys)"),
    ("oft_", "an OFT file (oft_* keys)"),
    ("lora_A", "a PEFT-style file (lora_A/lora_B keys)"),
    ("lora_B", "a PEFT-style file (lora_A/lora_B keys)"),
    ("lora.down", "a diffusers attention-processor file (lora.down/lora.up keys)"),
    ("lora.up", "a diffusers attention-processor file (lora.down/lora.up keys)"),
    ("lora_linear_layer", "a diffusers attention-processor file (lora_linear_layer keys)"),
)


def foreign_format(keys: Iterable[str]) -> str | None:
    """What other adapter format tensor names show (e.g. "a LoHa file (hada_* keys)"), or None for none."""
    for key in keys:
        layer, _, part = key.partition(".")
        for marker, what in _FOREIGN_FORMATS:
            # kohya-layout formats put their marker after the first dot; peft/diffusers ones anywhere in the key.
            if marker in part or (marker.startswith("lora") and marker in key):
                return what
    return None


def _describe_extra(key: str) -> str:
    """What a tensor that is not a kohya LoRA down/up/alpha probably is, for the error message."""
    layer, _, part = key.partition(".")
    what = foreign_format([key])
    if what is not None:
        return what.removeprefix("a ").removeprefix("an ").replace(" file", " weight", 1)
    if key.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")):
        return "a full model weight (the file looks like a checkpoint, not a LoRA)"
    if part.endswith(("diff", "diff_b")) or (key.endswith((".weight", ".bias")) and "lora" not in key):
        return "a full weight or bias (checkpoint or diff), not a LoRA factor"
    return "an unrecognised tensor"


def short_list(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


_REFUSED = "; SPARE applies plain LoRA (lora_down/lora_up) only"


def _group(path: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group keys by layer, splitting at the first ``.`` as Automatic1111 and diffusers do.

    Other adapter formats (LoHa, LoKr, DoRA, LoCon with a Tucker core, PEFT) are refused by name.
    """
    what = foreign_format(tensors)
    if what is not None:
        example = next(k for k in sorted(tensors) if foreign_format([k]) is not None)
        raise LoraFileError(f"{path.name} is {what}, e.g. {example!r}{_REFUSED}")
    layers: dict[str, dict[str, torch.Tensor]] = {}
    extras: list[str] = []
    for key, tensor in tensors.items():
        layer, _, part = key.partition(".")
        if part in (DOWN, UP, ALPHA):
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
            f"{path.name} holds {len(extras)} tensor(s) that are not kohya LoRA down/up/alpha: {short_list(described)}"
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
    if not (torch.isfinite(down).all() and torch.isfinite(up).all() and math.isfinite(w.alpha)):
        raise LoraFileError(f"{path.name}: layer {layer!r} holds NaN or infinite weights; the file is broken")
    return w


def parse_lora_file_layers(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], expected_arch: str | None
) -> tuple[dict[str, LoraModuleWeights], dict[str, LoraModuleWeights]]:
    """A file's UNet layers and text-encoder layers (``lora_te*``), each by kohya layer name, as float32.

    Raises LoraFileError for anything wrong: another architecture, another adapter format, broken weights.
    """
    check_lora_arch(path, metadata, expected_arch)
    unet: dict[str, LoraModuleWeights] = {}
    text: dict[str, LoraModuleWeights] = {}
    for layer, parts in _group(path, tensors).items():
        (text if is_text_encoder_layer(layer) else unet)[layer] = _module_weights(path, layer, parts)
    return unet, text


def parse_lora_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], expected_arch: str | None
) -> dict[str, LoraModuleWeights]:
    """The UNet LoRA layers of a file's tensors, by kohya layer name, as float32; LoraFileError for anything wrong.

    Text-encoder layers are checked too but left out (see :func:`parse_lora_file_layers`).
    """
    return parse_lora_file_layers(path, tensors, metadata, expected_arch)[0]


def resolve_layers(path: Path, layers: Sequence[str], table: Mapping[str, str]) -> dict[str, str]:
    """kohya layer name -> the model's module name, for every layer; LoraFileError if one matches nothing."""
    resolved: dict[str, str] = {}
    unknown: list[str] = []
    for layer in layers:
        try:
            resolved[layer] = lookup_kohya_layer(layer, table)
        except ValueError:
            unknown.append(layer)
    if unknown:
        raise LoraFileError(
            f"{path.name}: {len(unknown)} layer(s) match no module of this UNet: {short_list(sorted(unknown))}. "
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
    weights, text_layers = parse_lora_file_layers(path, tensors, metadata, expected_arch)
    if text_layers:
        logger.warning(
            "%s: %d text-encoder layer(s) skipped (UNet layers only): %s",
            path.name, len(text_layers), short_list(sorted(text_layers)),
        )  # fmt: skip
    names = resolve_layers(path, list(weights), kohya_layer_table(unet_module_names, unet_config))
    logger.info("loaded LoRA %s: %d modules", path.name, len(weights))
    return {names[layer]: w for layer, w in weights.items()}, metadata
