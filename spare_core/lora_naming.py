"""Module names of a Stable-Diffusion UNet in the two spellings LoRA files use.

A kohya-layout LoRA names each adapted module by its path with ``.`` replaced by
``_`` and the prefix ``lora_unet_`` (kohya sd-scripts ``networks/lora.py``,
``create_modules``: ``(prefix + "." + name + "." + child_name).replace(".", "_")``).
The path is spelled either as in diffusers (``down_blocks.0.attentions.0...``) or
as in the original CompVis/SGM UNet (``input_blocks.1.1...``). kohya writes SD1/SD2
files in diffusers spelling and SDXL files in CompVis spelling; every host is tested against that.

The two spellings differ only in the block structure; the mapping below follows
ComfyUI ``comfy/utils.py`` ``unet_to_diffusers`` and diffusers
``loaders/single_file_utils.py`` ``convert_ldm_unet_checkpoint``:

- ``down_blocks.{b}.resnets.{i}`` -> ``input_blocks.{n}.0`` and
  ``down_blocks.{b}.attentions.{i}`` -> ``input_blocks.{n}.1`` with
  ``n = 1 + (layers_per_block + 1) * b + i``; ``down_blocks.{b}.downsamplers.0.conv``
  -> ``input_blocks.{(layers_per_block + 1) * (b + 1)}.0.op``.
- ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1`` -> ``middle_block.0`` / ``.1`` / ``.2``.
- ``up_blocks.{b}.resnets.{i}`` -> ``output_blocks.{(layers_per_block + 1) * b + i}.0``,
  attentions at ``.1`` of the same block; ``up_blocks.{b}.upsamplers.0.conv`` ->
  ``output_blocks.{last of block b}.{2 if the block has attentions else 1}.conv``.
- inside a resnet: ``norm1`` -> ``in_layers.0``, ``conv1`` -> ``in_layers.2``,
  ``time_emb_proj`` -> ``emb_layers.1``, ``norm2`` -> ``out_layers.0``, ``conv2`` ->
  ``out_layers.3``, ``conv_shortcut`` -> ``skip_connection``; inside an attention
  (``proj_in``, ``transformer_blocks.N.attn1.to_q``, ...) names are the same.
- ``conv_in`` -> ``input_blocks.0.0``, ``time_embedding.linear_1/2`` -> ``time_embed.0/2``,
  ``add_embedding.linear_1/2`` (SDXL) -> ``label_emb.0.0/0.2``, ``conv_norm_out`` ->
  ``out.0``, ``conv_out`` -> ``out.2``.

Underscores are ambiguous once dots are replaced (``down_blocks_0`` vs ``conv_in``),
so a layer name in a file is never split back heuristically: it is looked up in a
table built from the model's real module names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .architectures import NAMINGS, get_architecture

logger = logging.getLogger(__name__)

KOHYA_UNET_PREFIX = "lora_unet_"

# Inside a resnet block: diffusers name -> CompVis name (ComfyUI UNET_MAP_RESNET; diffusers
# update_unet_resnet_ldm_to_diffusers). Activations and dropout have no named counterpart.
_RESNET_TO_COMPVIS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_RESNET_TO_DIFFUSERS = {v: k for k, v in _RESNET_TO_COMPVIS.items()}

# Modules outside the block structure (ComfyUI UNET_MAP_BASIC; diffusers DIFFUSERS_TO_LDM_MAPPING).
_TOP_TO_COMPVIS = {
    "conv_in": "input_blocks.0.0",
    "time_embedding": "time_embed",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.act": "time_embed.1",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding": "label_emb.0",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.act": "label_emb.0.1",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_act": "out.1",
    "conv_out": "out.2",
}
_TOP_TO_DIFFUSERS = {v: k for k, v in _TOP_TO_COMPVIS.items()}

_DOWN_UP = re.compile(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.(.+))?$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(?:\.(.+))?$")
_IN_OUT = re.compile(r"^(input|output)_blocks\.(\d+)\.(\d+)(?:\.(.+))?$")
_MIDDLE = re.compile(r"^middle_block\.(\d+)(?:\.(.+))?$")


class _Layout:
    """Block counts of a UNet config, the only facts the two spellings depend on."""

    def __init__(self, unet_config: Mapping[str, Any]):
        try:
            self.down_types: list[str] = list(unet_config["down_block_types"])
            self.up_types: list[str] = list(unet_config["up_block_types"])
            per_block = unet_config["layers_per_block"]
        except KeyError as e:
            raise ValueError(f"UNet config has no {e.args[0]!r}: cannot derive CompVis block numbers") from e
        n = len(self.down_types)
        if len(self.up_types) != n:
            raise ValueError(f"UNet config has {n} down blocks but {len(self.up_types)} up blocks")
        self.layers: list[int] = [int(per_block)] * n if isinstance(per_block, int) else [int(x) for x in per_block]
        if len(self.layers) != n:
            raise ValueError(f"layers_per_block {per_block!r} does not match {n} down blocks")
        mid = unet_config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"
        if mid != "UNetMidBlock2DCrossAttn":
            raise ValueError(f"mid_block_type {mid!r} has no CompVis layout here (expected UNetMidBlock2DCrossAttn)")
        # input_blocks: 0 is conv_in, then per down block its resnets and (except the last) a downsampler.
        self.down_start = [1 + sum(x + 1 for x in self.layers[:b]) for b in range(n)]
        # up blocks hold one more resnet than the mirrored down block (diffusers reversed_layers_per_block + 1).
        self.up_layers = [x + 1 for x in reversed(self.layers)]
        self.up_start = [sum(self.up_layers[:b]) for b in range(n)]

    @property
    def n_blocks(self) -> int:
        return len(self.layers)

    def down_has_attention(self, b: int) -> bool:
        return "CrossAttn" in self.down_types[b]

    def up_has_attention(self, b: int) -> bool:
        return "CrossAttn" in self.up_types[b]

    def upsampler_slot(self, b: int) -> int:
        return 2 if self.up_has_attention(b) else 1


def _join(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def _resnet_inner_to_compvis(rest: str | None, name: str) -> str | None:
    if rest is None:
        return None
    head, _, tail = rest.partition(".")
    if head not in _RESNET_TO_COMPVIS:
        raise ValueError(f"{name!r}: resnet part {head!r} has no CompVis counterpart")
    return _join(_RESNET_TO_COMPVIS[head], tail)


def _resnet_inner_to_diffusers(rest: str | None, name: str) -> str | None:
    if rest is None:
        return None
    parts = rest.split(".")
    head, tail = ".".join(parts[:2]), ".".join(parts[2:])
    if head not in _RESNET_TO_DIFFUSERS:
        head, tail = parts[0], ".".join(parts[1:])  # skip_connection has no index
    if head not in _RESNET_TO_DIFFUSERS:
        raise ValueError(f"{name!r}: resnet part {rest!r} has no diffusers counterpart")
    return _join(_RESNET_TO_DIFFUSERS[head], tail)


def _sampler_inner(rest: str | None, name: str, diffusers_conv: str, compvis_conv: str) -> str | None:
    """Downsample2D.conv is CompVis Downsample.op; Upsample2D.conv keeps its name."""
    if rest is None:
        return None
    head, _, tail = rest.partition(".")
    if head != diffusers_conv:
        raise ValueError(f"{name!r}: sampler part {head!r} has no counterpart (expected {diffusers_conv!r})")
    return _join(compvis_conv, tail)


def _check_index(value: int, limit: int, what: str, name: str) -> None:
    if not 0 <= value < limit:
        raise ValueError(f"{name!r}: {what} {value} does not exist in this UNet config (0..{limit - 1})")


def _down_up_to_compvis(m: re.Match, lay: _Layout, name: str) -> str:
    side, b, kind, i, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
    _check_index(b, lay.n_blocks, f"{side} block", name)
    is_down = side == "down"
    per_block = lay.layers[b] if is_down else lay.up_layers[b]
    start = lay.down_start[b] if is_down else lay.up_start[b]
    prefix = "input_blocks" if is_down else "output_blocks"
    has_attention = lay.down_has_attention(b) if is_down else lay.up_has_attention(b)
    if kind in ("downsamplers", "upsamplers"):
        if (kind == "downsamplers") != is_down or i != 0 or b == lay.n_blocks - 1:
            raise ValueError(f"{name!r}: no such sampler in this UNet config")
        if is_down:
            return _join(f"input_blocks.{start + per_block}.0", _sampler_inner(rest, name, "conv", "op"))
        slot = lay.upsampler_slot(b)
        return _join(f"output_blocks.{start + per_block - 1}.{slot}", _sampler_inner(rest, name, "conv", "conv"))
    _check_index(i, per_block, kind[:-1], name)
    if kind == "attentions":
        if not has_attention:
            raise ValueError(f"{name!r}: {side} block {b} has no attentions in this UNet config")
        return _join(f"{prefix}.{start + i}.1", rest)
    return _join(f"{prefix}.{start + i}.0", _resnet_inner_to_compvis(rest, name))


def _mid_to_compvis(m: re.Match, name: str) -> str:
    kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
    if kind == "attentions":
        _check_index(i, 1, "mid attention", name)
        return _join("middle_block.1", rest)
    _check_index(i, 2, "mid resnet", name)
    return _join(f"middle_block.{2 * i}", _resnet_inner_to_compvis(rest, name))


def diffusers_to_compvis(module_name: str, unet_config: Mapping[str, Any]) -> str:
    """CompVis/SGM spelling of a diffusers UNet module path (SD1, SD2, SDXL layouts).

    Raises ValueError for a path with no CompVis counterpart (block containers,
    activations, dropout) or one that the config says does not exist.
    """
    return _to_compvis(module_name, _Layout(unet_config))


def _to_compvis(module_name: str, lay: _Layout) -> str:
    if module_name in _TOP_TO_COMPVIS:
        return _TOP_TO_COMPVIS[module_name]
    m = _DOWN_UP.match(module_name)
    if m:
        return _down_up_to_compvis(m, lay, module_name)
    m = _MID.match(module_name)
    if m:
        return _mid_to_compvis(m, module_name)
    raise ValueError(f"{module_name!r} has no CompVis counterpart")


def _input_to_diffusers(n: int, j: int, rest: str | None, lay: _Layout, name: str) -> str:
    if n == 0:
        if j != 0 or rest is not None:
            raise ValueError(f"{name!r}: input_blocks.0 holds only conv_in (input_blocks.0.0)")
        return "conv_in"
    for b in range(lay.n_blocks):
        i = n - lay.down_start[b]
        if 0 <= i <= lay.layers[b]:
            break
    else:
        raise ValueError(f"{name!r}: input block {n} does not exist in this UNet config")
    if i == lay.layers[b]:
        if j != 0 or b == lay.n_blocks - 1:
            raise ValueError(f"{name!r}: no such downsampler in this UNet config")
        return _join(f"down_blocks.{b}.downsamplers.0", _sampler_inner(rest, name, "op", "conv"))
    if j == 0:
        return _join(f"down_blocks.{b}.resnets.{i}", _resnet_inner_to_diffusers(rest, name))
    if j == 1 and lay.down_has_attention(b):
        return _join(f"down_blocks.{b}.attentions.{i}", rest)
    raise ValueError(f"{name!r}: input block {n} has no part {j} in this UNet config")


def _output_to_diffusers(n: int, j: int, rest: str | None, lay: _Layout, name: str) -> str:
    for b in range(lay.n_blocks):
        i = n - lay.up_start[b]
        if 0 <= i < lay.up_layers[b]:
            break
    else:
        raise ValueError(f"{name!r}: output block {n} does not exist in this UNet config")
    if j == 0:
        return _join(f"up_blocks.{b}.resnets.{i}", _resnet_inner_to_diffusers(rest, name))
    if j == 1 and lay.up_has_attention(b):
        return _join(f"up_blocks.{b}.attentions.{i}", rest)
    last = i == lay.up_layers[b] - 1
    if last and b < lay.n_blocks - 1 and j == lay.upsampler_slot(b):
        return _join(f"up_blocks.{b}.upsamplers.0", _sampler_inner(rest, name, "conv", "conv"))
    raise ValueError(f"{name!r}: output block {n} has no part {j} in this UNet config")


def _middle_to_diffusers(k: int, rest: str | None, name: str) -> str:
    if k == 1:
        return _join("mid_block.attentions.0", rest)
    if k in (0, 2):
        return _join(f"mid_block.resnets.{k // 2}", _resnet_inner_to_diffusers(rest, name))
    raise ValueError(f"{name!r}: middle_block has only parts 0, 1, 2")


def compvis_to_diffusers(module_name: str, unet_config: Mapping[str, Any]) -> str:
    """Inverse of :func:`diffusers_to_compvis`."""
    return _to_diffusers(module_name, _Layout(unet_config))


def _to_diffusers(module_name: str, lay: _Layout) -> str:
    if module_name in _TOP_TO_DIFFUSERS:
        return _TOP_TO_DIFFUSERS[module_name]
    m = _IN_OUT.match(module_name)
    if m:
        side, n, j, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        if side == "input":
            return _input_to_diffusers(n, j, rest, lay, module_name)
        return _output_to_diffusers(n, j, rest, lay, module_name)
    m = _MIDDLE.match(module_name)
    if m:
        return _middle_to_diffusers(int(m.group(1)), m.group(2), module_name)
    raise ValueError(f"{module_name!r} has no diffusers counterpart")


def to_kohya_key(module_name: str) -> str:
    """kohya layer name of a module path: ``lora_unet_`` + path with ``.`` -> ``_``."""
    return KOHYA_UNET_PREFIX + module_name.replace(".", "_")


def default_naming(arch: str) -> str:
    """The spelling kohya sd-scripts writes for ``arch``: diffusers for SD1/SD2 (and the toy), CompVis for SDXL."""
    return get_architecture(arch).naming


def kohya_layer_names(module_names: Iterable[str], naming: str, unet_config: Mapping[str, Any]) -> dict[str, str]:
    """Map kohya layer name -> diffusers module name for ``naming`` ("diffusers" or "compvis").

    Names without a counterpart in that spelling (the root, block containers,
    activations) are left out; two modules that would share a layer name raise.
    """
    if naming not in NAMINGS:
        raise ValueError(f"unknown naming {naming!r}; expected one of {NAMINGS}")
    lay = _Layout(unet_config) if naming == "compvis" else None  # a bad config raises here, not per name
    table: dict[str, str] = {}
    for name in module_names:
        if not name:
            continue
        try:
            layer = to_kohya_key(_to_compvis(name, lay) if lay else name)
        except ValueError:
            continue
        if table.setdefault(layer, name) != name:
            raise ValueError(f"modules {table[layer]!r} and {name!r} share the kohya layer name {layer!r}")
    return table


def export_layer_names(module_names: Sequence[str], arch: str, unet_config: Mapping[str, Any]) -> dict[str, str]:
    """Map diffusers module name -> the kohya layer name a file for ``arch`` uses (its registered spelling)."""
    naming = default_naming(arch)
    lay = _Layout(unet_config) if naming == "compvis" else None
    names = {name: to_kohya_key(_to_compvis(name, lay) if lay else name) for name in module_names}
    if len(set(names.values())) != len(names):
        raise ValueError("two modules map to the same kohya layer name")
    return names


def kohya_layer_table(module_names: Sequence[str], unet_config: Mapping[str, Any]) -> dict[str, str]:
    """Both spellings in one lookup table: kohya layer name -> diffusers module name.

    A config without a CompVis layout (another mid block type) gets the diffusers spelling only.
    """
    table = kohya_layer_names(module_names, "diffusers", unet_config)
    try:
        compvis = kohya_layer_names(module_names, "compvis", unet_config)
    except ValueError as e:
        logger.debug("no CompVis spelling for this UNet: %s", e)
        compvis = {}
    for layer, name in compvis.items():
        if table.setdefault(layer, name) != name:
            raise ValueError(f"kohya layer name {layer!r} means both {table[layer]!r} and {name!r}")
    return table


def lookup_kohya_layer(layer: str, table: Mapping[str, str]) -> str:
    """Diffusers module name of ``layer`` (with or without ``lora_unet_``) in a :func:`kohya_layer_table`."""
    key = layer if layer.startswith(KOHYA_UNET_PREFIX) else KOHYA_UNET_PREFIX + layer
    try:
        return table[key]
    except KeyError:
        raise ValueError(
            f"LoRA layer {layer!r} matches no module of this UNet (neither diffusers nor CompVis spelling)"
        ) from None


def resolve_kohya_layer(layer: str, unet_module_names: Sequence[str], unet_config: Mapping[str, Any]) -> str:
    """Diffusers module name of a kohya layer in either spelling, by lookup (never by splitting at ``_``).

    For many layers build the table once with :func:`kohya_layer_table` and use :func:`lookup_kohya_layer`.
    """
    return lookup_kohya_layer(layer, kohya_layer_table(unet_module_names, unet_config))
