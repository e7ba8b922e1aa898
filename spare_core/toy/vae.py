"""The toy model's first stage: an exact pixel <-> space-to-depth mapping.

A learned VAE is not needed at 32 x 32 px; the UNet instead works on a
16 x 16 x 12 space-to-depth view of the image, which runs about twice as fast
as 32 x 32 x 3 pixels. This module gives that mapping the interface diffusers'
``StableDiffusionPipeline`` expects of its ``vae`` (``encode(...).latent_dist``,
``decode(...).sample``, ``config.scaling_factor``, ``config.block_out_channels``
for the scale factor), so the toy model runs through the same pipeline code as
a real Stable Diffusion checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


@dataclass
class _LatentDist:
    """A point mass: what ``AutoencoderKL.encode(...).latent_dist`` returns, without noise."""

    mean: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


@dataclass
class _EncoderOutput:
    latent_dist: _LatentDist


@dataclass
class _DecoderOutput:
    sample: torch.Tensor


class PixelShuffleVAE(ModelMixin, ConfigMixin):
    """Space-to-depth "autoencoder": encode is pixel-unshuffle, decode is pixel-shuffle."""

    @register_to_config
    def __init__(self, factor: int = 2, in_channels: int = 3, scaling_factor: float = 1.0, force_upcast: bool = False):
        super().__init__()
        self.register_to_config(
            latent_channels=in_channels * factor * factor,
            # diffusers derives the pixel/latent scale factor as 2 ** (len(block_out_channels) - 1).
            block_out_channels=[in_channels * factor * factor] * (factor.bit_length()),
        )
        # No weights: a zero-size buffer lets ModelMixin report device and dtype.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        latents = F.pixel_unshuffle(x, self.config.factor)
        out = _EncoderOutput(_LatentDist(latents))
        return out if return_dict else (out.latent_dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None):
        image = F.pixel_shuffle(z, self.config.factor)
        return _DecoderOutput(image) if return_dict else (image,)
