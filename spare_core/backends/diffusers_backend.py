"""The diffusers backend: a ``StableDiffusionPipeline`` (toy, SD1, SD2) seen through the backend interface."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from diffusers import StableDiffusionPipeline
from torch import nn

from ..backend import Conditioning

logger = logging.getLogger(__name__)


def detect_arch(pipe: StableDiffusionPipeline) -> str:
    """``toy``, ``sd1`` or ``sd2``, from the components' configs (never from a file name)."""
    from ..toy.vae import PixelShuffleVAE

    if isinstance(pipe.vae, PixelShuffleVAE):
        return "toy"
    dim = pipe.unet.config.cross_attention_dim
    if dim == 768:
        return "sd1"
    if dim == 1024:
        return "sd2"
    raise ValueError(
        f"unsupported UNet: cross_attention_dim {dim} is neither SD1 (768) nor SD2 (1024); "
        "SDXL pipelines need the SDXL backend"
    )


class DiffusersBackend:
    """A Stable-Diffusion-style diffusers pipeline as a :class:`DiffusionBackend`."""

    def __init__(self, pipe: StableDiffusionPipeline, arch: str | None = None):
        self.pipe = pipe
        self.arch = arch or detect_arch(pipe)
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self._prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
        for module in (pipe.unet, pipe.text_encoder, pipe.vae):
            module.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.pipe.scheduler.alphas_cumprod.float().cpu()

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.pipe.unet.config.sample_size
        return (self.pipe.unet.config.in_channels, size, size)

    @property
    def image_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def denoiser(self) -> nn.Module:
        return self.pipe.unet

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        tok = self.pipe.tokenizer
        ids = tok(
            list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.pipe.text_encoder.device)
        hidden = self.pipe.text_encoder(ids)[0]
        return Conditioning(hidden.to(self.dtype))

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        out = self.pipe.unet(x_t, t, encoder_hidden_states=cond.hidden_states).sample
        if self._prediction_type == "epsilon":
            return out
        if self._prediction_type == "v_prediction":
            # eps = sqrt(a) v + sqrt(1 - a) x_t (Salimans & Ho 2022, v = sqrt(a) eps - sqrt(1 - a) x0).
            a = self.alphas_cumprod.to(x_t.device)[t.long()].to(x_t.dtype).view(-1, 1, 1, 1)
            return a.sqrt() * out + (1 - a).sqrt() * x_t
        raise ValueError(f"unsupported prediction type {self._prediction_type!r}")

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = vae.encode(images.to(self.device, vae.dtype)).latent_dist.mode()
        return latents * vae.config.scaling_factor

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance_scale: float) -> torch.Tensor:
        from ..sampling import generate

        return generate(self.pipe, prompts, seeds, steps=steps, guidance_scale=guidance_scale)
