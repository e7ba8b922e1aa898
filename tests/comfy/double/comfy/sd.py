"""Double of ComfyUI ``comfy/sd.py``: load_lora_for_models, CLIP and VAE.

CLIP wraps a transformers ``CLIPTextModel`` and a Hugging Face tokenizer; VAE wraps a
diffusers-style autoencoder (``encode(x).latent_dist``, ``decode(z).sample``). Both
keep ComfyUI's calling conventions: token dicts of (token, weight) pairs, cond of
shape [1, 77 * chunks, dim] plus pooled output, images as [N, H, W, C] in [0, 1],
raw (unscaled) VAE latents.
"""

from __future__ import annotations

import logging

import torch

from . import lora as comfy_lora
from . import model_management
from .model_patcher import ModelPatcher

logger = logging.getLogger("comfy.sd")


def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
    key_map = {}
    if model is not None:
        key_map = comfy_lora.model_lora_keys_unet(model.model, key_map)
    if clip is not None:
        key_map = comfy_lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    loaded = comfy_lora.load_lora(lora, key_map)
    new_model, taken = None, set()
    if model is not None:
        new_model = model.clone()
        taken |= set(new_model.add_patches(loaded, strength_model))
    new_clip = None
    if clip is not None:
        new_clip = clip.clone()
        taken |= set(new_clip.add_patches(loaded, strength_clip))
    for x in loaded:
        if x not in taken:
            logger.warning("NOT LOADED %s", x)
    return new_model, new_clip


class _Tokenizer:
    """ComfyUI's SD1Tokenizer conventions over a Hugging Face tokenizer: {"l": [[(id, weight), ...]]}."""

    def __init__(self, hf_tokenizer, name: str = "l"):
        self.hf, self.name = hf_tokenizer, name

    def tokenize_with_weights(self, text: str, return_word_ids=False, **kwargs):
        ids = self.hf(
            [text], padding="max_length", max_length=self.hf.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids[0]
        return {self.name: [[(int(i), 1.0) for i in ids]]}


class _ClipModel(torch.nn.Module):
    """``cond_stage_model``: encode_token_weights as ComfyUI's ClipTokenWeightEncoder (one clip, "l")."""

    def __init__(self, text_encoder, name: str = "l"):
        super().__init__()
        self.transformer = text_encoder
        self.name = name
        self.empty_tokens = None  # set by the wrapper: the tokens of ""

    def reset_clip_options(self):
        pass

    def set_clip_options(self, options):
        pass

    def _encode(self, ids: list[int]):
        device = next(self.transformer.parameters()).device
        out = self.transformer(torch.tensor([ids], device=device))
        return out[0].float(), out[1].float()

    def encode_token_weights(self, token_weight_pairs):
        chunks = token_weight_pairs[self.name]
        outs, pooled = [], None
        for chunk in chunks:
            z, p = self._encode([t for t, _ in chunk])
            weights = torch.tensor([w for _, w in chunk], dtype=z.dtype, device=z.device)
            if (weights != 1.0).any():  # ComfyUI: z = (z - z_empty) * w + z_empty
                z_empty, _ = self._encode([t for t, _ in self.empty_tokens[self.name][0]])
                z = (z - z_empty) * weights[None, :, None] + z_empty
            outs.append(z)
            pooled = p if pooled is None else pooled
        return torch.cat(outs, dim=-2), pooled


class _SDXLTokenizer:
    """ComfyUI's SDXLTokenizer: the same text as {"g": ..., "l": ...} (one Hugging Face tokenizer for both here)."""

    def __init__(self, hf_tokenizer):
        self.l, self.g = _Tokenizer(hf_tokenizer, "l"), _Tokenizer(hf_tokenizer, "g")

    def tokenize_with_weights(self, text: str, return_word_ids=False, **kwargs):
        return {**self.g.tokenize_with_weights(text), **self.l.tokenize_with_weights(text)}


class _SDXLClipModel(torch.nn.Module):
    """ComfyUI ``sdxl_clip.SDXLClipModel``: clip_l and clip_g at their penultimate layer, concatenated;
    the pooled output is clip_g's (projected). Weights other than 1 are not supported here."""

    def __init__(self, text_encoder_l, text_encoder_g):
        super().__init__()
        self.clip_l, self.clip_g = text_encoder_l, text_encoder_g
        self.empty_tokens = None

    def reset_clip_options(self):
        pass

    def set_clip_options(self, options):
        pass

    def encode_token_weights(self, token_weight_pairs):
        device = next(self.clip_g.parameters()).device
        outs = []
        for name, encoder in (("l", self.clip_l), ("g", self.clip_g)):
            (chunk,) = token_weight_pairs[name]
            out = encoder(torch.tensor([[t for t, _ in chunk]], device=device), output_hidden_states=True)
            outs.append(out)
        cond = torch.cat([outs[0].hidden_states[-2], outs[1].hidden_states[-2]], dim=-1).float()
        return cond, outs[1].text_embeds.float()


class CLIP:
    def __init__(
        self,
        target=None,
        embedding_directory=None,
        no_init=False,
        tokenizer_data=None,
        parameters=0,
        model_options=None,
    ):
        if no_init:
            return
        raise NotImplementedError("the double builds CLIP objects with comfy_double.wrap_clip")

    def clone(self):
        n = CLIP(no_init=True)
        n.patcher = self.patcher.clone()
        n.cond_stage_model = self.cond_stage_model
        n.tokenizer = self.tokenizer
        n.layer_idx = self.layer_idx
        n.tokenizer_options = self.tokenizer_options.copy()
        n.use_clip_schedule = False
        n.apply_hooks_to_conds = None
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        return self.patcher.add_patches(patches, strength_patch, strength_model)

    def clip_layer(self, layer_idx):
        self.layer_idx = layer_idx

    def tokenize(self, text, return_word_ids=False, **kwargs):
        return self.tokenizer.tokenize_with_weights(text, return_word_ids, **kwargs)

    def load_model(self):
        model_management.load_model_gpu(self.patcher)
        return self.patcher

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        self.load_model()
        cond, pooled = self.cond_stage_model.encode_token_weights(tokens)
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        if return_pooled:
            return cond, pooled
        return cond

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict=None, show_pbar=True):
        out = self.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
        cond = out.pop("cond")
        out.update(add_dict or {})
        return [[cond, out]]

    def encode(self, text):
        return self.encode_from_tokens(self.tokenize(text))


class VAE:
    def __init__(self, sd=None, device=None, config=None, dtype=None, metadata=None):
        raise NotImplementedError("the double builds VAE objects with comfy_double.wrap_vae")

    @classmethod
    def _wrap(cls, autoencoder, downscale_ratio: int, latent_channels: int) -> VAE:
        vae = cls.__new__(cls)
        vae.first_stage_model = autoencoder
        vae.downscale_ratio = vae.upscale_ratio = downscale_ratio
        vae.latent_channels = latent_channels
        vae.output_channels = 3
        vae.process_input = lambda image: image * 2.0 - 1.0
        vae.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
        vae.device = model_management.vae_device()
        vae.output_device = model_management.intermediate_device()
        vae.patcher = ModelPatcher(autoencoder, vae.device, model_management.unet_offload_device())
        return vae

    @property
    def vae_dtype(self):
        weight = next(self.first_stage_model.parameters(), None)
        return torch.float32 if weight is None else weight.dtype

    def spacial_compression_encode(self):
        return self.downscale_ratio

    def encode(self, pixel_samples):
        """[N, H, W, C] in [0, 1] -> raw latents [N, C, h, w] (the distribution's mode), float32."""
        r = self.downscale_ratio
        h, w = (pixel_samples.shape[1] // r) * r, (pixel_samples.shape[2] // r) * r
        if (h, w) != tuple(pixel_samples.shape[1:3]):  # ComfyUI crops to a multiple of the ratio, centred
            y, x = (pixel_samples.shape[1] % r) // 2, (pixel_samples.shape[2] % r) // 2
            pixel_samples = pixel_samples[:, y : y + h, x : x + w]
        model_management.load_models_gpu([self.patcher])
        pixels = self.process_input(pixel_samples.movedim(-1, 1)).to(self.device, self.vae_dtype)
        return self.first_stage_model.encode(pixels).latent_dist.mode().to(self.output_device).float()

    def decode(self, samples_in, vae_options=None):
        """Raw latents -> [N, H, W, C] in [0, 1]."""
        model_management.load_models_gpu([self.patcher])
        out = self.first_stage_model.decode(samples_in.to(self.device, self.vae_dtype)).sample
        return self.process_output(out.to(self.output_device).float()).movedim(1, -1)
