"""What a single-file Stable Diffusion checkpoint holds, from its tensor names and shapes alone.

Everything here works on a ``{key: shape}`` table, read from the safetensors
header without loading a tensor (:func:`read_shapes`), so the rules can be
tested on full-size tables built on PyTorch's ``meta`` device. Never from the
file name.

The order is fixed: key names first (which family, which text encoder), shape
rules second (input channels, the UNet's cross-attention width against the text
encoder's width, class embeddings). Shape rules compare widths with each other
where they can, so a reduced-width model of the same layout is detected like
the full one.

Key names follow the original CompVis / Stability layout that ComfyUI and
Automatic1111 keep: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*``
(VAE), ``cond_stage_model.transformer.*`` (SD 1.x CLIP ViT-L),
``cond_stage_model.model.*`` (SD 2.x OpenCLIP ViT-H) and
``conditioner.embedders.{0,1}.*`` (SDXL: CLIP ViT-L, OpenCLIP ViT-bigG).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

Shapes = Mapping[str, tuple[int, ...]]

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_TEXT = "cond_stage_model.transformer."
SD2_TEXT = "cond_stage_model.model."
SDXL_TEXT_L = "conditioner.embedders.0.transformer."
SDXL_TEXT_G = "conditioner.embedders.1.model."
REFINER_TEXT_G = "conditioner.embedders.0.model."

FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL base"}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
REFUSAL_TAIL = "SPARE erases from text-to-image base models (SD 1.x, SD 2.x, SDXL base)"

# Input channels of the first UNet convolution, for the variants that share a base model's layout.
_IN_CHANNEL_VARIANTS = {
    9: "inpainting UNet (9 input channels)",
    8: "InstructPix2Pix-style editing UNet (8 input channels)",
    5: "depth-conditioned UNet (5 input channels)",
    7: "x4 upscaler UNet (7 input channels)",
}
_CROSS_ATTN_KEY = re.compile(
    r"^model\.diffusion_model\.(input_blocks|middle_block|output_blocks)\..*attn2\.to_k\.weight$"
)


class UnsupportedCheckpoint(ValueError):
    """A checkpoint file SPARE does not open; the message is one line naming what was found."""


@dataclass(frozen=True)
class Detected:
    """A checkpoint SPARE can open: its architecture key (``sd1``, ``sd2``, ``sdxl``) and the widths seen."""

    arch: str
    context_dim: int
    in_channels: int

    @property
    def family(self) -> str:
        return FAMILY_NAMES[self.arch]


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from a ``.safetensors`` header; no tensor is loaded, nothing is unpickled."""
    from safetensors import safe_open

    path = Path(path)
    refuse_pickles(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as exc:  # safetensors raises SafetensorError / OSError for a damaged header
        raise UnsupportedCheckpoint(f"{path.name} is not a readable .safetensors file ({exc})") from exc


def refuse_pickles(path: Path) -> None:
    """Pickled checkpoints can run code when loaded: refuse them by suffix before opening anything."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsupportedCheckpoint(
            f"{path.name} is a pickled checkpoint ({path.suffix}); SPARE opens only .safetensors files "
            "(convert it to safetensors with a tool you trust)"
        )
    if path.suffix.lower() != ".safetensors":
        raise UnsupportedCheckpoint(f"{path.name} is not a .safetensors file; SPARE opens single-file safetensors")


def detect_checkpoint(shapes: Shapes, name: str = "the checkpoint") -> Detected:
    """The architecture of a full Stable Diffusion checkpoint, or :class:`UnsupportedCheckpoint` saying what it is."""
    if not shapes:
        raise UnsupportedCheckpoint(f"{name} holds no tensors")
    _refuse_other_families(shapes, name)
    family = _family_from_text_encoder(shapes, name)
    return _check_shapes(shapes, name, family)


def _has_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in shapes)


def _contains(shapes: Shapes, part: str) -> bool:
    return any(part in key for key in shapes)


def _refuse_other_families(shapes: Shapes, name: str) -> None:
    """Files that are not SD-family checkpoints at all, named by the keys that give them away."""
    if _contains(shapes, "joint_blocks."):
        raise UnsupportedCheckpoint(f"{name} looks like Stable Diffusion 3 (MMDiT 'joint_blocks'); {REFUSAL_TAIL}")
    if _contains(shapes, "double_blocks."):
        raise UnsupportedCheckpoint(f"{name} looks like Flux ('double_blocks'); {REFUSAL_TAIL}")
    if any(k.startswith("lora_") or ".lora_down." in k or ".lora_A." in k for k in shapes):
        raise UnsupportedCheckpoint(f"{name} is a LoRA, not a model checkpoint; open the base model it was made for")
    if not _has_prefix(shapes, UNET):
        if _has_prefix(shapes, "down_blocks.") or _has_prefix(shapes, "unet."):
            what = "a diffusers-layout component file; open its whole diffusers folder instead"
        elif _has_prefix(shapes, "encoder.down.") or _has_prefix(shapes, "decoder.up."):
            what = "a VAE alone"
        elif _has_prefix(shapes, "model.diffusion_model") or _has_prefix(shapes, "diffusion_model."):
            what = "a diffusion model SPARE does not know"
        else:
            what = "not a Stable Diffusion checkpoint (no model.diffusion_model.* UNet keys)"
        raise UnsupportedCheckpoint(f"{name} is {what}; {REFUSAL_TAIL}")
    if f"{UNET}input_blocks.0.0.weight" not in shapes:
        raise UnsupportedCheckpoint(
            f"{name} has model.diffusion_model.* keys but no UNet input_blocks; it is an unknown model. {REFUSAL_TAIL}"
        )


def _family_from_text_encoder(shapes: Shapes, name: str) -> str:
    """Key names first: the text encoder's prefix says the family."""
    if _has_prefix(shapes, SDXL_TEXT_G):
        if not _has_prefix(shapes, SDXL_TEXT_L):
            raise UnsupportedCheckpoint(f"{name} has SDXL's OpenCLIP bigG encoder but not its CLIP-L one; incomplete")
        return "sdxl"
    if _has_prefix(shapes, REFINER_TEXT_G):
        raise UnsupportedCheckpoint(
            f"{name} looks like the SDXL refiner (one OpenCLIP bigG text encoder, no CLIP-L); {REFUSAL_TAIL}"
        )
    if _has_prefix(shapes, SD2_TEXT):
        return "sd2"
    if _has_prefix(shapes, SD1_TEXT):
        return "sd1"
    raise UnsupportedCheckpoint(
        f"{name} has {_unet_guess(shapes)} but no text encoder; SPARE needs a full checkpoint (UNet, text encoder, VAE)"
    )


def _context_dim(shapes: Shapes) -> int | None:
    for key, shape in shapes.items():
        if _CROSS_ATTN_KEY.match(key) and len(shape) == 2:
            return int(shape[1])
    return None


def _unet_guess(shapes: Shapes) -> str:
    """A UNet named from its true cross-attention width, for messages about UNet-only files."""
    dim = _context_dim(shapes)
    has_label = f"{UNET}label_emb.0.0.weight" in shapes
    names = {768: "an SD 1.x UNet", 1024: "an SD 2.x UNet", 2048: "an SDXL base UNet", 1280: "an SDXL refiner UNet"}
    if dim in names and (dim in (2048, 1280)) == has_label:
        return names[dim]
    return f"a UNet (cross-attention width {dim})" if dim else "a UNet"


def _text_width(shapes: Shapes, arch: str) -> int | None:
    """The text encoder's hidden width (SDXL: both encoders together, as the UNet sees them)."""
    keys = {
        "sd1": [f"{SD1_TEXT}text_model.embeddings.token_embedding.weight"],
        "sd2": [f"{SD2_TEXT}token_embedding.weight"],
        "sdxl": [f"{SDXL_TEXT_L}text_model.embeddings.token_embedding.weight", f"{SDXL_TEXT_G}token_embedding.weight"],
    }[arch]
    widths = [shapes[k][-1] for k in keys if k in shapes and len(shapes[k]) == 2]
    return sum(widths) if len(widths) == len(keys) else None


def _check_shapes(shapes: Shapes, name: str, arch: str) -> Detected:
    """Shape rules second: variants that share the family's key names, and widths that must agree."""
    family = FAMILY_NAMES[arch]
    conv_in = shapes[f"{UNET}input_blocks.0.0.weight"]
    in_channels = int(conv_in[1]) if len(conv_in) == 4 else -1
    if in_channels != 4:
        variant = _IN_CHANNEL_VARIANTS.get(in_channels, f"UNet with {in_channels} input channels")
        raise UnsupportedCheckpoint(f"{name} looks like an {family} {variant}; {REFUSAL_TAIL}")
    has_label = f"{UNET}label_emb.0.0.weight" in shapes
    if arch != "sdxl" and has_label:
        raise UnsupportedCheckpoint(
            f"{name} looks like an {family} unCLIP / image-variation UNet (class embeddings); {REFUSAL_TAIL}"
        )
    if arch == "sdxl" and not has_label:
        raise UnsupportedCheckpoint(f"{name} has SDXL's text encoders but its UNet lacks SDXL's size embeddings")
    context = _context_dim(shapes)
    width = _text_width(shapes, arch)
    if context is None or width is None:
        raise UnsupportedCheckpoint(
            f"{name} looks like {family} but its cross-attention or text-encoder weights are missing"
        )
    if context != width:
        raise UnsupportedCheckpoint(
            f"{name} has {family} key names, but its UNet's cross-attention width ({context}) does not match "
            f"its text encoder ({width}); it is not a model SPARE knows"
        )
    if not _has_prefix(shapes, VAE):
        raise UnsupportedCheckpoint(
            f"{name} is an {family} checkpoint without a VAE (first_stage_model.*); use a full one"
        )
    return Detected(arch=arch, context_dim=context, in_channels=in_channels)


# --- SD 2.x epsilon or v-prediction ---------------------------------------------------------------------------------
# Epsilon and v checkpoints share every key and shape, so the file's weights or a marker must decide.

#: ComfyUI writes this empty tensor into checkpoints it saves from a v-prediction model (comfy/model_base.py).
V_PRED_KEY = "v_pred"
#: The weight ComfyUI's SD 2.x statistic reads (comfy/supported_models.py, SD20.model_type).
V_STAT_KEY = f"{UNET}output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_STAT_THRESHOLD = 0.09
_PARAMETERIZATION = re.compile(r"^\s*parameterization\s*:\s*[\"']?(\w+)[\"']?\s*(#.*)?$", re.MULTILINE)


def yaml_parameterization(text: str) -> str | None:
    """``v`` or ``eps`` from an original-config YAML's ``parameterization:`` line (what Automatic1111 reads)."""
    match = _PARAMETERIZATION.search(text)
    return match.group(1) if match else None


def v_statistic_says_v(norm1_bias_std: float) -> bool:
    """ComfyUI's rule for SD 2.x base-shaped UNets (4 input channels).

    Source: ComfyUI ``comfy/supported_models.py``, ``SD20.model_type``. In its
    words restated: take the bias of the first LayerNorm (``norm1``) in the first
    transformer block of the last output block (``output_blocks.11.1``); if the
    population standard deviation of that vector is above 0.09 the model is
    treated as v-prediction, otherwise epsilon. ComfyUI itself calls the rule a
    heuristic; it separates SD 2.0/2.1 768-v from 512-base.
    """
    return norm1_bias_std > V_STAT_THRESHOLD


def detect_prediction(path: str | Path, shapes: Shapes, arch: str) -> tuple[str, str]:
    """(``epsilon`` | ``v_prediction``, why), in order: a marker in or beside the file, the statistic, the default.

    Markers: a ``v_pred`` key in the file (any architecture; ComfyUI writes it), or a YAML
    file with the checkpoint's stem beside it whose ``parameterization`` says ``v`` or ``eps``.
    The weight statistic applies to SD 2.x only; everything else defaults to epsilon.
    """
    path = Path(path)
    if V_PRED_KEY in shapes:
        return "v_prediction", f"the file holds a '{V_PRED_KEY}' marker"
    for yaml_path in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if yaml_path.is_file():
            value = yaml_parameterization(yaml_path.read_text(encoding="utf-8", errors="replace"))
            if value == "v":
                return "v_prediction", f"{yaml_path.name} says parameterization: v"
            if value == "eps":
                return "epsilon", f"{yaml_path.name} says parameterization: eps"
    if arch == "sd2" and V_STAT_KEY in shapes:
        std = _read_std(path, V_STAT_KEY)
        if v_statistic_says_v(std):
            return "v_prediction", f"ComfyUI's weight statistic (std {std:.3f} > {V_STAT_THRESHOLD})"
        return "epsilon", f"ComfyUI's weight statistic (std {std:.3f} <= {V_STAT_THRESHOLD})"
    return "epsilon", "no v-prediction marker"


def _read_std(path: Path, key: str) -> float:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return float(f.get_tensor(key).float().std(unbiased=False))
