"""Diffusers state dicts written back in the original CompVis / Stability single-file layout, for tests.

Single-file checkpoints (ComfyUI ``models/checkpoints``, Automatic1111
``models/Stable-diffusion``) keep the key names of the original training code.
The naming rules restated here are the documented ones (CompVis
``ldm/modules/diffusionmodules/openaimodel.py`` and ``model.py`` module names,
OpenCLIP's ``TextTransformer``, Stability's ``sgm`` conditioner), as diffusers'
``loaders/single_file_utils.py`` maps them back; the code is our own.

UNet (``model.diffusion_model.``), ``L`` = layers per block:
  conv_in -> input_blocks.0.0; time_embedding.linear_1/2 -> time_embed.0/2;
  add_embedding.linear_1/2 -> label_emb.0.0/0.2 (SDXL);
  down_blocks.b.resnets.i / attentions.i -> input_blocks.{(L+1)b+i+1}.0 / .1;
  down_blocks.b.downsamplers.0.conv -> input_blocks.{(L+1)(b+1)}.0.op;
  mid_block.resnets.0 / attentions.0 / resnets.1 -> middle_block.0 / .1 / .2;
  up_blocks.b.resnets.i / attentions.i -> output_blocks.{(L+1)b+i}.0 / .1;
  up_blocks.b.upsamplers.0.conv -> output_blocks.{(L+1)b+L}.{1, or 2 after an attention}.conv;
  conv_norm_out / conv_out -> out.0 / out.2;
  resnet parts norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut ->
  in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection.
VAE (``first_stage_model.``): down_blocks.i.resnets.j -> down.i.block.j; downsamplers.0 -> downsample;
  decoder up_blocks.i -> up.{n-1-i} (reversed), upsamplers.0 -> upsample; mid_block.resnets.0/1 ->
  mid.block_1/2; mid_block.attentions.0 -> mid.attn_1 with group_norm, to_q/k/v, to_out.0 -> norm, q/k/v,
  proj_out as 1x1 convolutions; conv_norm_out -> norm_out; conv_shortcut -> nin_shortcut.
CLIP ViT-L (SD1 ``cond_stage_model.transformer.``, SDXL ``conditioner.embedders.0.transformer.``):
  the transformers module names under ``text_model.``.
OpenCLIP (SD2 ``cond_stage_model.model.``, SDXL ``conditioner.embedders.1.model.``):
  token_embedding, positional_embedding (a bare tensor), transformer.resblocks.i.{ln_1, ln_2,
  attn.in_proj_weight/bias (q, k, v stacked), attn.out_proj, mlp.c_fc, mlp.c_proj}, ln_final,
  text_projection (stored as [width, proj], the transpose of a Linear weight).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _resnet(rest: str) -> str:
    part, _, tail = rest.partition(".")
    return f"{RESNET_PARTS[part]}.{tail}"


def unet_key(key: str, layers_per_block: int, up_has_attention: Mapping[int, bool]) -> str:
    """One diffusers UNet key in the original layout (without the ``model.diffusion_model.`` prefix)."""
    n = layers_per_block + 1
    fixed = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = n * b + i + 1
        return f"input_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{idx}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{n * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        kind, i, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * i}.{_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = n * b + i
        return f"output_blocks.{idx}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{idx}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        b = int(m[1])
        slot = 2 if up_has_attention[b] else 1
        return f"output_blocks.{n * b + layers_per_block}.{slot}.conv.{m[2]}"
    raise KeyError(f"no original-layout name for UNet key {key!r}")


def unet_to_original(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    up_has_attention = {b: t.startswith("CrossAttn") for b, t in enumerate(config["up_block_types"])}
    lpb = config["layers_per_block"]
    return {f"model.diffusion_model.{unet_key(k, lpb, up_has_attention)}": v for k, v in state.items()}


def vae_key(key: str, num_blocks: int) -> str:
    rules = [
        (r"(encoder|decoder)\.conv_norm_out\.(.*)", lambda m: f"{m[1]}.norm_out.{m[2]}"),
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", lambda m: f"encoder.down.{m[1]}.downsample.{m[2]}"),
        (
            r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
            lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}",
        ),
        (
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)",
            lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.{m[2]}",
        ),
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", lambda m: f"{m[1]}.mid.attn_1.{_vae_attn(m[2])}"),
    ]
    for pattern, new in rules:
        if m := re.fullmatch(pattern, key):
            key = new(m)
            break
    return key.replace("conv_shortcut", "nin_shortcut")


def _vae_attn(rest: str) -> str:
    names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for old, new in names.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise KeyError(rest)


def vae_to_original(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        new = vae_key(k, len(config["block_out_channels"]))
        if ".mid.attn_1." in new and new.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # the original attention uses 1x1 convolutions
        out[f"first_stage_model.{new}"] = v
    return out


def clip_to_original(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """CLIP ViT-L as the original files keep it: the transformers names under ``<prefix>text_model.``."""
    out = {}
    for k, v in state.items():
        if k.startswith("text_projection"):
            continue
        name = k if k.startswith("text_model.") else f"text_model.{k}"
        out[prefix + name] = v
    return out


def open_clip_to_original(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model in OpenCLIP's layout, q/k/v fused into ``in_proj``."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    parts = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    layers = sorted({int(m[1]) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    for i in layers:
        src = f"encoder.layers.{i}."
        dst = f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], dim=0
            )
            for old, new in parts.items():
                out[f"{dst}{new}.{kind}"] = state[f"{src}{old}.{kind}"]
    out[f"{prefix}token_embedding.weight"] = state["embeddings.token_embedding.weight"]
    out[f"{prefix}positional_embedding"] = state["embeddings.position_embedding.weight"]
    out[f"{prefix}ln_final.weight"] = state["final_layer_norm.weight"]
    out[f"{prefix}ln_final.bias"] = state["final_layer_norm.bias"]
    width = state["embeddings.token_embedding.weight"].shape[1]
    proj = state.get("text_projection.weight")
    out[f"{prefix}text_projection"] = proj.T.contiguous() if proj is not None else torch.eye(width)
    out[f"{prefix}logit_scale"] = torch.tensor(4.6052)
    return out


def pipeline_to_original(pipe) -> dict[str, torch.Tensor]:
    """A whole SD 1.x / 2.x / SDXL diffusers pipeline as one original-layout state dict."""
    sd = unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    sd.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    if getattr(pipe, "text_encoder_2", None) is not None:
        sd.update(clip_to_original(pipe.text_encoder.state_dict(), "conditioner.embedders.0.transformer."))
        sd.update(open_clip_to_original(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    elif pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size and _is_open_clip(pipe):
        sd.update(open_clip_to_original(pipe.text_encoder.state_dict(), "cond_stage_model.model."))
    else:
        sd.update(clip_to_original(pipe.text_encoder.state_dict(), "cond_stage_model.transformer."))
    return {k: v.detach().contiguous() for k, v in sd.items()}


def _is_open_clip(pipe) -> bool:
    # SD 2.x's text encoder is OpenCLIP (gelu); SD 1.x's is OpenAI CLIP (quick_gelu).
    return pipe.text_encoder.config.hidden_act == "gelu"
