"""Builders for the ComfyUI test double: wrap given diffusers parts as a MODEL, a CLIP and a VAE.

Test-only. Imports nothing from ``spare_core``: the CompVis module tree below is
written from the block layout ComfyUI's ``comfy/utils.py`` ``unet_to_diffusers``
describes (and diffusers' ``convert_ldm_unet_checkpoint`` inverts).
"""

from __future__ import annotations

import asyncio
import inspect
import os
from dataclasses import dataclass, field

import comfy.latent_formats
import comfy.model_management
import comfy.utils
import folder_paths
import server
import torch
from comfy.model_base import SDXL, BaseModel, ModelType
from comfy.model_patcher import ModelPatcher
from comfy.sd import CLIP, VAE, _ClipModel, _SDXLClipModel, _SDXLTokenizer, _Tokenizer
from torch import nn

# ---------------------------------------------------------------- the UNet in CompVis names


def _resblock(r: nn.Module) -> nn.Module:
    """A diffusers ResnetBlock2D under ComfyUI ResBlock names (the same module objects)."""
    m = nn.Module()
    m.in_layers = nn.Sequential(r.norm1, r.nonlinearity, r.conv1)
    m.emb_layers = nn.Sequential(r.nonlinearity, r.time_emb_proj)
    m.out_layers = nn.Sequential(r.norm2, r.nonlinearity, r.dropout, r.conv2)
    if getattr(r, "conv_shortcut", None) is not None:
        m.skip_connection = r.conv_shortcut
    return m


def _holder(**parts: nn.Module) -> nn.Module:
    m = nn.Module()
    for name, part in parts.items():
        setattr(m, name, part)
    return m


class CompvisUNet(nn.Module):
    """A diffusers ``UNet2DConditionModel`` whose modules are registered under ComfyUI's CompVis names.

    The Linear/Conv2d/norm modules are the diffusers UNet's own objects, so weights
    set on ``input_blocks.1.1.transformer_blocks.0.attn2.to_k`` and hooks attached to
    it act in the diffusers forward, which ``forward`` runs. Only the naming is
    ComfyUI's; the computation is diffusers'.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        object.__setattr__(self, "_diffusers", unet)  # not registered: only CompVis names are visible
        self.time_embed = nn.Sequential(
            unet.time_embedding.linear_1, unet.time_embedding.act, unet.time_embedding.linear_2
        )
        blocks = [nn.ModuleList([unet.conv_in])]
        for down in unet.down_blocks:
            attentions = getattr(down, "attentions", None)
            for i, resnet in enumerate(down.resnets):
                blocks.append(nn.ModuleList([_resblock(resnet)] + ([attentions[i]] if attentions else [])))
            if down.downsamplers:
                blocks.append(nn.ModuleList([_holder(op=down.downsamplers[0].conv)]))
        self.input_blocks = nn.ModuleList(blocks)
        if getattr(unet, "add_embedding", None) is not None:  # SDXL: ComfyUI's label_emb reads the adm vector y
            e = unet.add_embedding
            self.label_emb = nn.Sequential(nn.Sequential(e.linear_1, e.act, e.linear_2))
        mid = unet.mid_block
        self.middle_block = nn.ModuleList([_resblock(mid.resnets[0]), mid.attentions[0], _resblock(mid.resnets[1])])
        blocks = []
        for up in unet.up_blocks:
            attentions = getattr(up, "attentions", None)
            for i, resnet in enumerate(up.resnets):
                parts = [_resblock(resnet)] + ([attentions[i]] if attentions else [])
                if i == len(up.resnets) - 1 and up.upsamplers:
                    parts.append(_holder(conv=up.upsamplers[0].conv))
                blocks.append(nn.ModuleList(parts))
        self.output_blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(unet.conv_norm_out, unet.conv_act, unet.conv_out)
        mine = {id(p) for p in self.parameters()} | {id(b) for b in self.buffers()}
        theirs = {id(p) for p in unet.parameters()} | {id(b) for b in unet.buffers()}
        if mine != theirs:
            raise ValueError("the CompVis tree does not reach every weight of this UNet (unsupported block type)")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs):
        if y is None:
            return self._diffusers(x, timesteps, encoder_hidden_states=context).sample
        # ComfyUI adds label_emb(y) to the time embedding; diffusers' add_embedding is that module, so its input
        # is replaced by y (the text_embeds/time_ids given to diffusers only shape what the hook discards).
        unet = self._diffusers
        sizes = 6 * unet.config.addition_time_embed_dim
        extras = {"text_embeds": y[:, :-sizes], "time_ids": torch.zeros(len(y), 6, device=y.device, dtype=y.dtype)}
        hook = unet.add_embedding.register_forward_pre_hook(lambda module, args: (y,))
        try:
            return self._diffusers(x, timesteps, encoder_hidden_states=context, added_cond_kwargs=extras).sample
        finally:
            hook.remove()


def comfy_unet_config(config) -> dict:
    """ComfyUI's unet_config keys (as ``comfy/model_detection.py`` derives them) for a diffusers UNet config."""
    n = len(config["block_out_channels"])
    per = config["layers_per_block"]
    res = [per] * n if isinstance(per, int) else list(per)
    cross_down = ["CrossAttn" in t for t in config["down_block_types"]]
    cross_up = ["CrossAttn" in t for t in config["up_block_types"]]
    depth_in = [int(cross_down[b]) for b in range(n) for _ in range(res[b])]
    depth_out_in_order = [int(cross_up[b]) for b, r in enumerate(reversed(res)) for _ in range(r + 1)]
    return {
        "in_channels": config["in_channels"],
        "out_channels": config["out_channels"],
        "model_channels": config["block_out_channels"][0],
        "num_res_blocks": res,
        "channel_mult": [c // config["block_out_channels"][0] for c in config["block_out_channels"]],
        "transformer_depth": depth_in,
        "transformer_depth_output": list(reversed(depth_out_in_order)),
        "transformer_depth_middle": 1,
        "context_dim": config["cross_attention_dim"],
        "use_linear_in_transformer": bool(config.get("use_linear_projection", False)),
        "adm_in_channels": config.get("projection_class_embeddings_input_dim")
        if config.get("addition_embed_type") == "text_time"
        else None,
        "adm_size_dim": config.get("addition_time_embed_dim"),  # double only: ComfyUI's Timestep(256) width
    }


@dataclass
class ModelConfig:
    """The parts of ComfyUI's ``supported_models_base.BASE`` a BaseModel reads."""

    unet_config: dict
    latent_format: comfy.latent_formats.LatentFormat
    sampling_settings: dict = field(default_factory=dict)


def wrap_unet(
    unet: nn.Module,
    prediction: str = "eps",
    beta_schedule: str = "linear",
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
    scale_factor: float = 0.18215,
) -> ModelPatcher:
    """A MODEL (ModelPatcher over a BaseModel) around a given diffusers UNet, as a checkpoint loader returns it.

    ``beta_schedule`` uses ComfyUI's spelling: "linear" is diffusers' "scaled_linear".
    Call under ``torch.inference_mode()`` with inference-mode weights, as ComfyUI loads them.
    """
    config = ModelConfig(
        unet_config=comfy_unet_config(dict(unet.config)),
        latent_format=comfy.latent_formats.SD15(scale_factor=scale_factor),
        sampling_settings={"beta_schedule": beta_schedule, "linear_start": linear_start, "linear_end": linear_end},
    )
    config.latent_format.latent_channels = unet.config["in_channels"]
    model_type = {"eps": ModelType.EPS, "v": ModelType.V_PREDICTION}[prediction]
    model_class = SDXL if config.unet_config["adm_in_channels"] else BaseModel
    base = model_class(config, CompvisUNet(unet), model_type=model_type)
    base.eval()
    mm = comfy.model_management
    return ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def wrap_clip(text_encoder: nn.Module, tokenizer) -> CLIP:
    clip = CLIP(no_init=True)
    clip.cond_stage_model = _ClipModel(text_encoder)
    clip.tokenizer = _Tokenizer(tokenizer)
    clip.cond_stage_model.empty_tokens = clip.tokenizer.tokenize_with_weights("")
    mm = comfy.model_management
    clip.patcher = ModelPatcher(clip.cond_stage_model, mm.text_encoder_device(), mm.unet_offload_device())
    clip.layer_idx = None
    clip.tokenizer_options = {}
    clip.use_clip_schedule = False
    clip.apply_hooks_to_conds = None
    return clip


def wrap_sdxl_clip(text_encoder_l: nn.Module, text_encoder_g: nn.Module, tokenizer) -> CLIP:
    """An SDXL CLIP (``comfy/sdxl_clip.py``): token dicts {"l", "g"}; cond = clip_l's and clip_g's penultimate
    hidden states side by side, pooled = clip_g's projected pooled output."""
    clip = wrap_clip(text_encoder_l, tokenizer)
    clip.cond_stage_model = _SDXLClipModel(text_encoder_l, text_encoder_g)
    clip.tokenizer = _SDXLTokenizer(tokenizer)
    clip.cond_stage_model.empty_tokens = clip.tokenizer.tokenize_with_weights("")
    mm = comfy.model_management
    clip.patcher = ModelPatcher(clip.cond_stage_model, mm.text_encoder_device(), mm.unet_offload_device())
    return clip


def wrap_vae(autoencoder: nn.Module) -> VAE:
    cfg = autoencoder.config
    ratio = 2 ** (len(cfg["block_out_channels"]) - 1)
    return VAE._wrap(autoencoder, ratio, cfg.get("latent_channels", 4))


def inference_copy(module: nn.Module) -> nn.Module:
    """The same module with every weight replaced by an inference-mode clone, as ComfyUI's loaders make them."""
    with torch.inference_mode():
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None:
                    sub._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=False)
            for name, b in list(sub._buffers.items()):
                if b is not None:
                    sub._buffers[name] = b.clone()
    return module


# ---------------------------------------------------------------- running things as ComfyUI does


def model_output(patcher: ModelPatcher, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """What a sampler gets from MODEL for one call: load (= patch) the clone, then ``apply_model``."""
    comfy.model_management.load_models_gpu([patcher])
    return patcher.model.apply_model(
        x, sigma, c_crossattn=context, transformer_options=patcher.model_options["transformer_options"]
    )


def load_extension(module) -> dict[str, type]:
    """ComfyUI ``nodes.py`` ``load_custom_node`` for a V3 pack: comfy_entrypoint -> ComfyExtension -> nodes."""
    from comfy_api.latest import ComfyExtension

    entry = module.comfy_entrypoint
    extension = asyncio.run(entry()) if inspect.iscoroutinefunction(entry) else entry()
    if not isinstance(extension, ComfyExtension):
        raise TypeError("comfy_entrypoint did not return a ComfyExtension")
    nodes = asyncio.run(extension.get_node_list())
    return {node.GET_SCHEMA().node_id: node for node in nodes}


def execute_node(node_cls, hidden: dict | None = None, **inputs):
    """Run a V3 node as ``execution.py`` does: a class clone with its hidden inputs, under inference mode."""
    from comfy_api.latest import io

    hidden = {io.Hidden.unique_id: "1", **(hidden or {})}
    clone = node_cls.PREPARE_CLASS_CLONE(hidden)
    with torch.inference_mode():
        return clone.EXECUTE_NORMALIZED(**inputs)


def configure(base_dir: str | os.PathLike) -> None:
    """Fresh state: models/, output/, temp/ and input/ under ``base_dir``; no loaded models, no messages."""
    folder_paths.configure(str(base_dir))
    comfy.model_management.unload_all_models()
    comfy.model_management.interrupt_current_processing(False)
    comfy.utils.progress_calls.clear()
    server.PromptServer.instance = server.PromptServer()
