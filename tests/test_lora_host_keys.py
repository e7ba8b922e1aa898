"""Every key of an exported LoRA resolves under ComfyUI's and Automatic1111's own key rules (SD1.5, SD2.1, SDXL).

The UNets are full size, built on PyTorch's ``meta`` device (no memory): the files
hold a rank-1 LoRA on every Linear and Conv2d module, written by ``save_lora_file``.
The hosts' rules are restated here from their sources (facts, not their code):

- ComfyUI ``comfy/lora.py`` ``model_lora_keys_unet``: for every UNet weight
  ``diffusion_model.<compvis path>.weight`` it accepts ``lora_unet_<compvis path, . -> _>``
  and, through ``comfy/utils.py`` ``unet_to_diffusers`` (driven by its unet_config:
  ``num_res_blocks``, ``transformer_depth``, ``transformer_depth_output``,
  ``transformer_depth_middle``), ``lora_unet_<diffusers path, . -> _>``.
- Automatic1111 ``extensions-builtin/Lora/networks.py``: ``convert_diffusers_name_to_compvis``
  rewrites diffusers-style names by regular expressions (down block b, item i ->
  ``input_blocks_{1 + 3b + i}``; up block -> ``output_blocks_{3b + i}``; resnet parts
  renamed by ``suffix_conversion``), then looks the result up among the model's
  module names with ``.`` -> ``_`` (``assign_network_names_to_compvis_modules``);
  a name it does not find has ``lora_unet`` replaced by ``diffusion_model`` (how
  CompVis-named SDXL files load). Base model from metadata: ``ss_base_model_version``
  starting with ``sdxl_`` -> SDXL, ``ss_v2 == "True"`` -> SD2, else SD1.

The restated ComfyUI layout is itself checked against diffusers' own LDM converter, and
the tables of hand-written names below were worked out from these rules by hand.
"""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from unet_configs import full_size

from spare_core.lora_file import LoraModuleWeights, save_lora_file
from spare_core.lora_naming import export_layer_names

# The full-size UNets, from the configs SPARE ships (SD 1.5, SD 2.1 base, SDXL base 1.0).
SD15, SD21, SDXL = full_size("sd1"), full_size("sd2"), full_size("sdxl")

# ComfyUI's unet_config of each model, written out by hand. comfy/model_detection.py lists the depths per level from
# the shallowest (64x64 latents) to the deepest, for output blocks too; unet_to_diffusers pops them from the end.
COMFY_CONFIG = {
    "sd1": dict(num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1),
    "sdxl": dict(num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10],
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10),
}  # fmt: skip
COMFY_CONFIG["sd2"] = COMFY_CONFIG["sd1"]
DIFFUSERS_CONFIG = {"sd1": SD15, "sd2": SD21, "sdxl": SDXL}

# (diffusers module, key in our file, ComfyUI's model weight, Automatic1111's module name), all by hand.
HAND_WRITTEN = {
    "sd1": [
        ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
         "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
         "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
         "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn2_to_k"),
        ("down_blocks.0.attentions.1.proj_in", "lora_unet_down_blocks_0_attentions_1_proj_in",
         "diffusion_model.input_blocks.2.1.proj_in.weight", "diffusion_model_input_blocks_2_1_proj_in"),
        ("down_blocks.2.resnets.1.conv2", "lora_unet_down_blocks_2_resnets_1_conv2",
         "diffusion_model.input_blocks.8.0.out_layers.3.weight", "diffusion_model_input_blocks_8_0_out_layers_3"),
        ("down_blocks.1.downsamplers.0.conv", "lora_unet_down_blocks_1_downsamplers_0_conv",
         "diffusion_model.input_blocks.6.0.op.weight", "diffusion_model_input_blocks_6_0_op"),
        ("down_blocks.3.resnets.1.conv1", "lora_unet_down_blocks_3_resnets_1_conv1",
         "diffusion_model.input_blocks.11.0.in_layers.2.weight", "diffusion_model_input_blocks_11_0_in_layers_2"),
        ("mid_block.resnets.1.time_emb_proj", "lora_unet_mid_block_resnets_1_time_emb_proj",
         "diffusion_model.middle_block.2.emb_layers.1.weight", "diffusion_model_middle_block_2_emb_layers_1"),
        ("mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
         "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
         "diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight",
         "diffusion_model_middle_block_1_transformer_blocks_0_attn1_to_q"),
        ("up_blocks.0.upsamplers.0.conv", "lora_unet_up_blocks_0_upsamplers_0_conv",
         "diffusion_model.output_blocks.2.1.conv.weight", "diffusion_model_output_blocks_2_1_conv"),
        ("up_blocks.2.upsamplers.0.conv", "lora_unet_up_blocks_2_upsamplers_0_conv",
         "diffusion_model.output_blocks.8.2.conv.weight", "diffusion_model_output_blocks_8_2_conv"),
        ("up_blocks.1.resnets.2.conv_shortcut", "lora_unet_up_blocks_1_resnets_2_conv_shortcut",
         "diffusion_model.output_blocks.5.0.skip_connection.weight", "diffusion_model_output_blocks_5_0_skip_connection"),
        ("up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj",
         "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj",
         "diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight",
         "diffusion_model_output_blocks_11_1_transformer_blocks_0_ff_net_0_proj"),
        ("time_embedding.linear_2", "lora_unet_time_embedding_linear_2",
         "diffusion_model.time_embed.2.weight", "diffusion_model_time_embed_2"),
        ("conv_in", "lora_unet_conv_in", "diffusion_model.input_blocks.0.0.weight", "diffusion_model_input_blocks_0_0"),
        ("conv_out", "lora_unet_conv_out", "diffusion_model.out.2.weight", "diffusion_model_out_2"),
    ],
    "sd2": [
        ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
         "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
         "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
         "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn2_to_k"),
        ("up_blocks.3.attentions.2.proj_out", "lora_unet_up_blocks_3_attentions_2_proj_out",
         "diffusion_model.output_blocks.11.1.proj_out.weight", "diffusion_model_output_blocks_11_1_proj_out"),
        ("mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
         "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_v",
         "diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_v.weight",
         "diffusion_model_middle_block_1_transformer_blocks_0_attn2_to_v"),
        ("up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
         "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0",
         "diffusion_model.output_blocks.3.1.transformer_blocks.0.attn1.to_out.0.weight",
         "diffusion_model_output_blocks_3_1_transformer_blocks_0_attn1_to_out_0"),
        ("time_embedding.linear_1", "lora_unet_time_embedding_linear_1",
         "diffusion_model.time_embed.0.weight", "diffusion_model_time_embed_0"),
    ],
    "sdxl": [
        ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
         "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k",
         "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
         "diffusion_model_input_blocks_4_1_transformer_blocks_0_attn2_to_k"),
        ("down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2",
         "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2",
         "diffusion_model.input_blocks.8.1.transformer_blocks.9.ff.net.2.weight",
         "diffusion_model_input_blocks_8_1_transformer_blocks_9_ff_net_2"),
        ("down_blocks.1.resnets.0.conv_shortcut", "lora_unet_input_blocks_4_0_skip_connection",
         "diffusion_model.input_blocks.4.0.skip_connection.weight", "diffusion_model_input_blocks_4_0_skip_connection"),
        ("down_blocks.0.downsamplers.0.conv", "lora_unet_input_blocks_3_0_op",
         "diffusion_model.input_blocks.3.0.op.weight", "diffusion_model_input_blocks_3_0_op"),
        ("down_blocks.1.downsamplers.0.conv", "lora_unet_input_blocks_6_0_op",
         "diffusion_model.input_blocks.6.0.op.weight", "diffusion_model_input_blocks_6_0_op"),
        ("mid_block.attentions.0.transformer_blocks.9.attn1.to_out.0",
         "lora_unet_middle_block_1_transformer_blocks_9_attn1_to_out_0",
         "diffusion_model.middle_block.1.transformer_blocks.9.attn1.to_out.0.weight",
         "diffusion_model_middle_block_1_transformer_blocks_9_attn1_to_out_0"),
        ("up_blocks.0.attentions.2.transformer_blocks.9.attn2.to_v",
         "lora_unet_output_blocks_2_1_transformer_blocks_9_attn2_to_v",
         "diffusion_model.output_blocks.2.1.transformer_blocks.9.attn2.to_v.weight",
         "diffusion_model_output_blocks_2_1_transformer_blocks_9_attn2_to_v"),
        ("up_blocks.1.attentions.0.proj_in", "lora_unet_output_blocks_3_1_proj_in",
         "diffusion_model.output_blocks.3.1.proj_in.weight", "diffusion_model_output_blocks_3_1_proj_in"),
        ("up_blocks.0.upsamplers.0.conv", "lora_unet_output_blocks_2_2_conv",
         "diffusion_model.output_blocks.2.2.conv.weight", "diffusion_model_output_blocks_2_2_conv"),
        ("up_blocks.1.upsamplers.0.conv", "lora_unet_output_blocks_5_2_conv",
         "diffusion_model.output_blocks.5.2.conv.weight", "diffusion_model_output_blocks_5_2_conv"),
        ("up_blocks.2.resnets.2.conv2", "lora_unet_output_blocks_8_0_out_layers_3",
         "diffusion_model.output_blocks.8.0.out_layers.3.weight", "diffusion_model_output_blocks_8_0_out_layers_3"),
        ("add_embedding.linear_2", "lora_unet_label_emb_0_2",
         "diffusion_model.label_emb.0.2.weight", "diffusion_model_label_emb_0_2"),
        ("time_embedding.linear_1", "lora_unet_time_embed_0",
         "diffusion_model.time_embed.0.weight", "diffusion_model_time_embed_0"),
        ("conv_out", "lora_unet_out_2", "diffusion_model.out.2.weight", "diffusion_model_out_2"),
    ],
}  # fmt: skip

# What Automatic1111 reads from the metadata to tell the base model, per architecture (by hand).
EXPECTED_METADATA = {
    "sd1": {"ss_base_model_version": "sd_v1", "ss_v2": "False", "ss_network_module": "networks.lora"},
    "sd2": {"ss_base_model_version": "sd_v2", "ss_v2": "True", "ss_network_module": "networks.lora"},
    "sdxl": {"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False", "ss_network_module": "networks.lora"},
}


# ---------------------------------------------------------------- the hosts' rules, restated


_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
_ATTENTION = ("norm", "proj_in", "proj_out")
_TRANSFORMER = ("norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2") + tuple(
    f"attn{a}.{p}" for a in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")
)
_BASIC = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
          "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
          "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}  # fmt: skip


def comfy_diffusers_to_compvis(cfg: dict) -> dict[str, str]:
    """ComfyUI ``unet_to_diffusers`` restated per module: diffusers module path -> CompVis module path."""
    depth, depth_out = list(cfg["transformer_depth"]), list(cfg["transformer_depth_output"])
    res = cfg["num_res_blocks"]
    out: dict[str, str] = dict(_BASIC)

    def attention(diffusers: str, compvis: str, n: int) -> None:
        for part in _ATTENTION:
            out[f"{diffusers}.{part}"] = f"{compvis}.{part}"
        for t in range(n):
            for part in _TRANSFORMER:
                out[f"{diffusers}.transformer_blocks.{t}.{part}"] = f"{compvis}.transformer_blocks.{t}.{part}"

    for b in range(len(res)):
        n = 1 + (res[b] + 1) * b
        for i in range(res[b]):
            for d, c in _RESNET.items():
                out[f"down_blocks.{b}.resnets.{i}.{d}"] = f"input_blocks.{n}.0.{c}"
            t = depth.pop(0)
            if t:
                attention(f"down_blocks.{b}.attentions.{i}", f"input_blocks.{n}.1", t)
            n += 1
        out[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"
    attention("mid_block.attentions.0", "middle_block.1", cfg["transformer_depth_middle"])
    for i, n in ((0, 0), (1, 2)):
        for d, c in _RESNET.items():
            out[f"mid_block.resnets.{i}.{d}"] = f"middle_block.{n}.{c}"
    for b, r in enumerate(reversed(res)):
        n = (r + 1) * b
        for i in range(r + 1):
            for d, c in _RESNET.items():
                out[f"up_blocks.{b}.resnets.{i}.{d}"] = f"output_blocks.{n}.0.{c}"
            t = depth_out.pop()
            if t:
                attention(f"up_blocks.{b}.attentions.{i}", f"output_blocks.{n}.1", t)
            if i == r:
                out[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{n}.{2 if t else 1}.conv"
            n += 1
    return out


def comfy_key_map(module_to_compvis: dict[str, str], model_compvis: set[str]) -> dict[str, str]:
    """ComfyUI ``model_lora_keys_unet``: LoRA layer name -> model weight key, both spellings."""
    key_map = {f"lora_unet_{c.replace('.', '_')}": f"diffusion_model.{c}.weight" for c in model_compvis}
    for d, c in module_to_compvis.items():
        key_map[f"lora_unet_{d.replace('.', '_')}"] = f"diffusion_model.{c}.weight"
    return key_map


_A1111_SUFFIX = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
                 "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}  # fmt: skip


def a1111_convert(key: str) -> str:
    """Automatic1111 ``convert_diffusers_name_to_compvis`` (UNet rules), restated."""
    if m := re.match(r"lora_unet_conv_in(.*)", key):
        return f"diffusion_model_input_blocks_0_0{m[1]}"
    if m := re.match(r"lora_unet_conv_out(.*)", key):
        return f"diffusion_model_out_2{m[1]}"
    if m := re.match(r"lora_unet_time_embedding_linear_(\d+)(.*)", key):
        return f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"
    if m := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        suffix = _A1111_SUFFIX.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        return (
            f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{suffix}"
        )
    if m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key):
        suffix = _A1111_SUFFIX.get(m[3], m[3]) if m[1] == "resnets" else m[3]
        return f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{suffix}"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        suffix = _A1111_SUFFIX.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        return f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{suffix}"
    if m := re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key):
        return f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key):
        return f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv"
    return key


def a1111_resolve(layer: str, mapping: set[str]) -> str | None:
    """The module Automatic1111 ``load_network`` finds for a layer name, or None ("didn't match keys")."""
    key = a1111_convert(layer)
    if key in mapping:
        return key
    key = layer.replace("lora_unet", "diffusion_model")
    return key if key in mapping else None


def a1111_base_model(metadata: dict[str, str]) -> str:
    """Automatic1111's base-model guess from a LoRA's metadata (``extensions-builtin/Lora/network.py``)."""
    if metadata.get("ss_base_model_version", "").startswith("sdxl_"):
        return "SDXL"
    if metadata.get("ss_v2") == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


# ---------------------------------------------------------------- the files


def _meta_unet(arch: str) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel(**DIFFUSERS_CONFIG[arch])


def _adaptable(unet) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


@pytest.fixture(scope="module", params=["sd1", "sd2", "sdxl"])
def exported(request, tmp_path_factory):
    """(arch, full-size meta UNet, file keys, metadata, layer -> module) for a rank-1 LoRA on every module."""
    arch = request.param
    unet = _meta_unet(arch)
    modules = {}
    for name, module in _adaptable(unet).items():
        out_f, in_f, *kernel = module.weight.shape
        up_shape = (out_f, 1, 1, 1) if kernel else (out_f, 1)
        modules[name] = LoraModuleWeights(torch.zeros(1, in_f, *kernel), torch.zeros(up_shape), 1.0)
    path = tmp_path_factory.mktemp(arch) / f"{arch}.safetensors"
    save_lora_file(path, modules, unet.config, arch, {})
    with safe_open(str(path), "pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    layer_of = {layer: name for name, layer in export_layer_names(list(modules), arch, unet.config).items()}
    return arch, unet, keys, metadata, layer_of, shapes


def test_the_restated_comfyui_layout_is_the_ldm_layout_diffusers_converts(exported):
    """Every parameter renamed by the restated rule converts back to itself with diffusers' LDM converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    arch, unet, *_ = exported
    to_compvis = comfy_diffusers_to_compvis(COMFY_CONFIG[arch])
    state = unet.state_dict()
    ldm = {}
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        ldm[f"model.diffusion_model.{to_compvis[module]}.{param}"] = value
    assert set(convert_ldm_unet_checkpoint(ldm, dict(unet.config))) == set(state)


def test_the_file_is_kohya_layout_with_the_metadata_automatic1111_reads(exported):
    arch, unet, keys, metadata, layer_of, shapes = exported
    layers = {k.partition(".")[0] for k in keys}
    assert keys == {f"{layer}.{part}" for layer in layers for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert set(layer_of) == layers and set(layer_of.values()) == set(_adaptable(unet))
    # Every Linear and Conv2d, counted by hand. A resnet has conv1, time_emb_proj, conv2 (+ conv_shortcut when its
    # channels change), an attention with n transformer blocks proj_in, proj_out and 10 per block. SD1/SD2:
    # 4 outside the blocks + down 8*3 + 2 + 6*12 + 3 + mid 2*3 + 12 + up 12*3 + 12 + 9*12 + 3 = 282.
    # SDXL: 6 + down (7 + 52 + 211) + mid (6 + 102) + up (319 + 79 + 12) = 794.
    assert len(layers) == {"sd1": 282, "sd2": 282, "sdxl": 794}[arch]
    assert {k: metadata[k] for k in EXPECTED_METADATA[arch]} == EXPECTED_METADATA[arch]
    assert a1111_base_model(metadata) == {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}[arch]
    # kohya's spelling per architecture: diffusers-style for SD1/SD2, CompVis for SDXL
    compvis = {layer.startswith(("lora_unet_input_blocks", "lora_unet_output_blocks", "lora_unet_middle_block"))
               for layer in layers if "blocks" in layer or "block_" in layer}  # fmt: skip
    assert compvis == {arch == "sdxl"}


def test_every_key_resolves_under_comfyui_rules(exported):
    arch, unet, keys, _, layer_of, _ = exported
    to_compvis = comfy_diffusers_to_compvis(COMFY_CONFIG[arch])
    model_weights = {to_compvis[name] for name in _adaptable(unet)}  # the compvis UNet's Linear/Conv2d weights
    key_map = comfy_key_map(to_compvis, model_weights)
    for layer, module in layer_of.items():
        assert key_map.get(layer) == f"diffusion_model.{to_compvis[module]}.weight", layer


def test_every_key_resolves_under_automatic1111_rules(exported):
    arch, unet, keys, _, layer_of, _ = exported
    to_compvis = comfy_diffusers_to_compvis(COMFY_CONFIG[arch])
    mapping = {f"diffusion_model_{to_compvis[name].replace('.', '_')}" for name in _adaptable(unet)}
    for layer, module in layer_of.items():
        assert a1111_resolve(layer, mapping) == f"diffusion_model_{to_compvis[module].replace('.', '_')}", layer


def test_hand_written_names_per_host(exported):
    arch, unet, keys, _, layer_of, _ = exported
    to_compvis = comfy_diffusers_to_compvis(COMFY_CONFIG[arch])
    model_weights = {to_compvis[name] for name in _adaptable(unet)}
    key_map = comfy_key_map(to_compvis, model_weights)
    mapping = {f"diffusion_model_{c.replace('.', '_')}" for c in model_weights}
    for module, layer, comfy_weight, a1111_name in HAND_WRITTEN[arch]:
        assert f"{layer}.lora_down.weight" in keys and layer_of[layer] == module
        assert key_map[layer] == comfy_weight
        assert a1111_resolve(layer, mapping) == a1111_name


def test_shapes_in_the_file_follow_the_module(exported):
    """Cross-attention keys take the text width of the architecture: 768 (SD1), 1024 (SD2), 2048 (SDXL)."""
    arch, _, _, _, _, shapes = exported
    layer = {"sd1": "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
             "sd2": "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
             "sdxl": "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"}[arch]  # fmt: skip
    width = {"sd1": 768, "sd2": 1024, "sdxl": 2048}[arch]
    out = {"sd1": 320, "sd2": 320, "sdxl": 640}[arch]
    assert shapes[f"{layer}.lora_down.weight"] == (1, width)
    assert shapes[f"{layer}.lora_up.weight"] == (out, 1)
    assert shapes[f"{layer}.alpha"] == ()
    proj_in = {"sd1": ("lora_unet_down_blocks_0_attentions_0_proj_in", (1, 320, 1, 1)),
               "sd2": ("lora_unet_down_blocks_0_attentions_0_proj_in", (1, 320)),
               "sdxl": ("lora_unet_input_blocks_4_1_proj_in", (1, 640))}[arch]  # fmt: skip
    assert shapes[f"{proj_in[0]}.lora_down.weight"] == proj_in[1]  # 1x1 conv in SD1, Linear in SD2/SDXL
