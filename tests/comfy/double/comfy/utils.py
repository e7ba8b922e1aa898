"""Double of ComfyUI ``comfy/utils.py``: attribute paths, the UNet key map, the progress bar, file loading."""

from __future__ import annotations

import torch

# ---------------------------------------------------------------- attribute paths (get_attr / set_attr_param)


def get_attr(obj, attr: str):
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr(obj, attr: str, value):
    """Set a dotted attribute; returns the previous value."""
    *path, last = attr.split(".")
    for name in path:
        obj = getattr(obj, name)
    prev = getattr(obj, last)
    setattr(obj, last, value)
    return prev


def set_attr_param(obj, attr: str, value):
    return set_attr(obj, attr, torch.nn.Parameter(value, requires_grad=False))


def copy_to_param(obj, attr: str, value):
    get_attr(obj, attr).data.copy_(value)


def load_torch_file(ckpt: str, safe_load: bool = False, device=None, return_metadata: bool = False):
    """Only safetensors files (what LoRA loaders read)."""
    from safetensors import safe_open

    sd, metadata = {}, None
    with safe_open(ckpt, framework="pt", device=str(device or "cpu")) as f:
        for k in f.keys():
            sd[k] = f.get_tensor(k)
        metadata = f.metadata()
    return (sd, metadata) if return_metadata else sd


# ---------------------------------------------------------------- unet_to_diffusers
# Written from the facts in ComfyUI's tables (UNET_MAP_RESNET, UNET_MAP_ATTENTIONS,
# TRANSFORMER_BLOCKS, UNET_MAP_BASIC): diffusers weight key -> CompVis weight key.

_RESNET = {  # CompVis ResBlock part -> diffusers ResnetBlock2D part
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_ATTENTION = ("proj_in", "proj_out", "norm")
_TRANSFORMER = ["norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2"] + [
    f"{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")
]
_BASIC = {
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
}


def _both(d: dict, diffusers: str, compvis: str) -> None:
    for k in ("weight", "bias"):
        d[f"{diffusers}.{k}"] = f"{compvis}.{k}"


def _resnet(d, diffusers, compvis):
    for cv, df in _RESNET.items():
        _both(d, f"{diffusers}.{df}", f"{compvis}.{cv}")


def _attention(d, diffusers, compvis, depth):
    for part in _ATTENTION:
        _both(d, f"{diffusers}.{part}", f"{compvis}.{part}")
    for t in range(depth):
        for part in _TRANSFORMER:
            _both(d, f"{diffusers}.transformer_blocks.{t}.{part}", f"{compvis}.transformer_blocks.{t}.{part}")


def unet_to_diffusers(unet_config: dict) -> dict[str, str]:
    """diffusers UNet weight key -> CompVis (``diffusion_model.``-less) key, from a ComfyUI unet_config."""
    if "num_res_blocks" not in unet_config:
        return {}
    res = list(unet_config["num_res_blocks"])
    depth_in = list(unet_config["transformer_depth"])
    # transformer_depth_output runs from the last output block to the first (model_detection.py).
    depth_out = list(reversed(unet_config["transformer_depth_output"]))
    n_blocks = len(unet_config["channel_mult"])
    d: dict[str, str] = {}
    block = 1
    for b in range(n_blocks):
        for i in range(res[b]):
            _resnet(d, f"down_blocks.{b}.resnets.{i}", f"input_blocks.{block}.0")
            depth = depth_in.pop(0)
            if depth > 0:
                _attention(d, f"down_blocks.{b}.attentions.{i}", f"input_blocks.{block}.1", depth)
            block += 1
        _both(d, f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{block}.0.op")
        block += 1
    _attention(d, "mid_block.attentions.0", "middle_block.1", unet_config.get("transformer_depth_middle", 1))
    _resnet(d, "mid_block.resnets.0", "middle_block.0")
    _resnet(d, "mid_block.resnets.1", "middle_block.2")
    block = 0
    for b, r in enumerate(reversed(res)):
        for i in range(r + 1):
            slot = 1
            _resnet(d, f"up_blocks.{b}.resnets.{i}", f"output_blocks.{block}.0")
            depth = depth_out[block]
            if depth > 0:
                _attention(d, f"up_blocks.{b}.attentions.{i}", f"output_blocks.{block}.1", depth)
                slot = 2
            if i == r:
                _both(d, f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{block}.{slot}.conv")
            block += 1
    for diffusers, compvis in _BASIC.items():
        _both(d, diffusers, compvis)
    return d


# ---------------------------------------------------------------- progress bar

PROGRESS_BAR_ENABLED = True
PROGRESS_BAR_HOOK = None
#: Every ProgressBar.update_absolute call as (value, total, preview, node_id): the double's record.
#: Real ComfyUI forwards them to PROGRESS_BAR_HOOK, which throttles what reaches the client.
progress_calls: list[tuple] = []


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


def set_progress_bar_global_hook(function) -> None:
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0
        self.hook = PROGRESS_BAR_HOOK
        self.node_id = node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        progress_calls.append((self.current, self.total, preview, self.node_id))
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)
