"""Sampling from a diffusers text-to-image pipeline on fixed seeds."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import DiffusionPipeline

#: Sampling defaults for the toy model (DDIM steps, classifier-free guidance).
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0


@torch.no_grad()
def generate(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    batch_size: int = 64,
    on_step: Callable[[], None] | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """One image per (prompt, seed) pair, as a float tensor [N, 3, H, W] in [-1, 1].

    Each image's initial noise comes from its own seed, so an image does not
    depend on what else is in the batch. ``on_step`` runs after every
    denoising step (a cancel check may raise there). ``size`` is the square
    image side in pixels (None: the pipeline's default). Works for any diffusers
    text-to-image pipeline with this call signature (``StableDiffusionPipeline``,
    ``StableDiffusionXLPipeline``).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    device = pipe.unet.device
    side = size // pipe.vae_scale_factor if size else pipe.unet.config.sample_size
    drawing_size = {"height": size, "width": size} if size else {}
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk_prompts = list(prompts[i : i + batch_size])
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[i : i + batch_size]]
        shape = (pipe.unet.config.in_channels, side, side)
        latents = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device, pipe.unet.dtype)
        images = pipe(
            prompt=chunk_prompts,
            latents=latents,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            output_type="pt",
            **drawing_size,
            **({"callback_on_step_end": _step_callback(on_step)} if on_step is not None else {}),
        ).images
        out.append(images.float().cpu() * 2 - 1)
    return torch.cat(out)


def _step_callback(on_step: Callable[[], None]):
    """diffusers' ``callback_on_step_end`` around a no-argument callable."""

    def callback(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        on_step()
        return callback_kwargs

    return callback
