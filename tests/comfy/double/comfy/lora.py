"""Double of ComfyUI ``comfy/lora.py``: which LoRA keys patch which UNet weights, and how.

``model_lora_keys_unet`` maps, for every UNet weight ``diffusion_model.<compvis path>.weight``:
``lora_unet_<compvis path with _>`` (kohya, CompVis spelling), ``<compvis path>`` (generic),
and through ``utils.unet_to_diffusers`` ``lora_unet_<diffusers path with _>`` (kohya,
diffusers spelling), ``lycoris_...``, and the diffusers/peft forms ``[unet.]<path with
.processor.to_>``. ``load_lora`` reads kohya ``<key>.lora_up.weight`` /
``.lora_down.weight`` / ``.alpha`` (and ``.diff``); every other key is logged as
"lora key not loaded".
"""

from __future__ import annotations

import logging

import torch

from . import utils

logger = logging.getLogger("comfy.lora")


def model_lora_keys_clip(model, key_map=None):
    return {} if key_map is None else key_map  # the double maps no text-encoder keys


def model_lora_keys_unet(model, key_map=None):
    key_map = {} if key_map is None else key_map
    for k in model.state_dict():
        if not k.startswith("diffusion_model."):
            continue
        path = k[len("diffusion_model.") :]
        if k.endswith(".weight"):
            path = path[: -len(".weight")]
            key_map["lora_unet_" + path.replace(".", "_")] = k
            key_map[k[: -len(".weight")]] = k
        else:
            key_map[k] = k
    for diffusers_key, compvis_key in utils.unet_to_diffusers(model.model_config.unet_config).items():
        if not diffusers_key.endswith(".weight"):
            continue
        unet_key = "diffusion_model." + compvis_key
        path = diffusers_key[: -len(".weight")]
        key_map["lora_unet_" + path.replace(".", "_")] = unet_key
        key_map["lycoris_" + path.replace(".", "_")] = unet_key
        for prefix in ("", "unet."):
            peft = prefix + path.replace(".to_", ".processor.to_")
            if peft.endswith(".to_out.0"):
                peft = peft[:-2]
            key_map[peft] = unet_key
    return key_map


def load_lora(lora, to_load, log_missing=True):
    """{model weight key: patch} for the LoRA keys ``to_load`` names."""
    patch_dict = {}
    loaded = set()
    for x, target in to_load.items():
        alpha_name = f"{x}.alpha"
        alpha = None
        if alpha_name in lora:
            alpha = lora[alpha_name].item()
            loaded.add(alpha_name)
        up, down = f"{x}.lora_up.weight", f"{x}.lora_down.weight"
        if up in lora:
            mid_name = f"{x}.lora_mid.weight"
            mid = lora.get(mid_name)
            if mid is not None:
                loaded.add(mid_name)
            patch_dict[target] = ("lora", (lora[up], lora[down], alpha, mid, None, None))
            loaded.update((up, down))
        diff_name = f"{x}.diff"
        if diff_name in lora:
            patch_dict[target] = ("diff", (lora[diff_name],))
            loaded.add(diff_name)
    if log_missing:
        for x in lora:
            if x not in loaded:
                logger.warning("lora key not loaded: %s", x)
    return patch_dict


def calculate_weight(patches, weight, key, intermediate_dtype=torch.float32, original_weights=None):
    """Apply (strength_patch, patch, strength_model, offset, function) tuples to a float32 weight copy."""
    for strength, v, strength_model, offset, function in patches:
        function = function or (lambda a: a)
        if offset is not None:
            raise NotImplementedError("the double does not patch weight slices")
        if strength_model != 1.0:
            weight *= strength_model
        kind, v = v
        if kind == "diff":
            diff = v[0].to(weight.device, weight.dtype)
            if diff.shape != weight.shape:
                logger.warning("WARNING SHAPE MISMATCH %s WEIGHT NOT MERGED %s != %s", key, diff.shape, weight.shape)
            elif strength != 0.0:
                weight += function(strength * diff)
        elif kind == "lora":
            up, down, alpha, mid = (t.to(weight.device, intermediate_dtype) if torch.is_tensor(t) else t for t in v[:4])
            if mid is not None:
                raise NotImplementedError("the double has no LoCon mid weights")
            scale = alpha / down.shape[0] if alpha is not None else 1.0
            lora_diff = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(weight.shape)
            weight += function(((strength * scale) * lora_diff).type(weight.dtype))
        else:
            logger.warning("patch type not recognized %s %s", kind, key)
    return weight
