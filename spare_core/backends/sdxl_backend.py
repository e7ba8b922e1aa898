"""The SDXL backend: a diffusers ``StableDiffusionXLPipeline`` seen through the backend contract.

What differs from SD 1.x/2.x (diffusers ``StableDiffusionXLPipeline.encode_prompt`` and
``_get_add_time_ids``; Podell et al. 2023, section 2.2):

- two text encoders: the cross-attention states are the penultimate hidden states of
  ``text_encoder`` (CLIP ViT-L, 768) and ``text_encoder_2`` (OpenCLIP ViT-bigG, 1280)
  concatenated (2048 wide);
- the UNet also reads ``added_cond_kwargs``: ``text_embeds``, the projected pooled
  output of ``text_encoder_2``, and ``time_ids``, the size conditioning
  ``(original height, original width, crop top, crop left, target height, target width)``.
  Both travel as :attr:`Conditioning.extra` under those names, so that the shared
  ``predict_noise`` hands them to the UNet unchanged. Sizes are the drawing size
  (``image_size``, which ``configure(resolution=...)`` sets), crop ``(0, 0)``, as the
  pipeline itself conditions;
- sampling is the pipeline's own (classifier-free guidance against the empty prompt as
  the pipeline makes it: zeros when ``force_zeros_for_empty_prompt``), on fixed seeds;
- LoRA files use kohya's SDXL spelling, CompVis paths (``lora_unet_input_blocks_4_1_...``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..backend import Conditioning
from .diffusers_backend import DiffusersBackend

if TYPE_CHECKING:
    from diffusers import StableDiffusionXLPipeline

    from ..domain import Domain

#: ``added_cond_kwargs`` names of the SDXL UNet (diffusers, ``addition_embed_type="text_time"``).
SDXL_EXTRAS = ("text_embeds", "time_ids")


class SDXLBackend(DiffusersBackend):
    """A ``StableDiffusionXLPipeline`` as a :class:`~spare_core.backend.DiffusionBackend`."""

    conditioning_extras: tuple[str, ...] = SDXL_EXTRAS

    def __init__(self, pipe: StableDiffusionXLPipeline, arch: str = "sdxl", domain: Domain | None = None):
        kind = pipe.unet.config.get("addition_embed_type")
        if kind != "text_time":
            raise ValueError(
                f"this UNet's addition_embed_type is {kind!r}, not SDXL's 'text_time': open it as SD 1.x/2.x"
            )
        if pipe.text_encoder_2 is None or pipe.tokenizer_2 is None:
            raise ValueError("this SDXL pipeline has no text_encoder_2: the pooled embedding comes from it")
        super().__init__(pipe, arch=arch, domain=domain)

    def _frozen_modules(self) -> tuple[nn.Module, ...]:
        parts = (self.pipe.unet, self.pipe.text_encoder, self.pipe.text_encoder_2, self.pipe.vae)
        return tuple(p for p in parts if p is not None)

    def _time_ids(self, n: int) -> torch.Tensor:
        """Size conditioning of ``n`` images: original size, crop top-left (0, 0), target size; all the drawing size."""
        side = self.image_size
        ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=self.dtype, device=self.device)
        return ids.repeat(n, 1)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        self._unpark_encoders()
        pipe = self.pipe
        states, pooled = [], None
        # The refiner has only the second encoder; the base model has both, in this order.
        for tok, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            if encoder is None:
                continue
            ids = tok(
                list(prompts),
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]  # text_encoder_2 is CLIPTextModelWithProjection: its first output is text_embeds
        if pooled is None or pooled.dim() != 2:
            raise ValueError("text_encoder_2 gave no pooled [N, dim] embedding (expected CLIPTextModelWithProjection)")
        hidden = torch.cat(states, dim=-1).to(self.device, self.dtype)
        extra = {"text_embeds": pooled.to(self.device, self.dtype), "time_ids": self._time_ids(len(prompts))}
        return Conditioning(hidden, extra)
