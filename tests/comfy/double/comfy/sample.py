"""Double of ComfyUI ``comfy/sample.py`` ``sample``: Euler sampling with classifier-free guidance.

Follows ``comfy/sample.py`` ``sample`` -> ``comfy/samplers.py`` ``KSampler.sample``
(``process_latent_in``, ``noise_scaling`` with ``max_denoise`` for a full
denoise, ``cfg_function``: ``uncond + (cond - uncond) * cfg``,
``process_latent_out``) and ``comfy/k_diffusion/sampling.py`` ``sample_euler``
(``d = (x - denoised) / sigma``, ``x += d * dt``; the callback gets
``i, denoised, x, total_steps`` as ``latent_preview``'s callbacks do).
Only ``euler`` with the ``normal`` or ``simple`` scheduler runs here.
"""

from __future__ import annotations

import torch

import comfy.model_management

from .samplers import SAMPLER_NAMES, SCHEDULER_NAMES, SCHEDULERS_RUN


def prepare_noise(latent_image: torch.Tensor, seed: int, noise_inds=None) -> torch.Tensor:
    """Noise for a whole batch from one seed (``comfy/sample.py`` ``prepare_noise`` without ``noise_inds``)."""
    generator = torch.manual_seed(seed)
    return torch.randn(latent_image.size(), dtype=latent_image.dtype, generator=generator, device="cpu")


def _cond_tensor(conditioning) -> torch.Tensor:
    """The cross-attention tensor of a conditioning list ``[[cond, {...}]]`` (one entry, as CLIPTextEncode makes)."""
    return conditioning[0][0]


def sample(
    model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0,
    disable_noise=False, start_step=None, last_step=None, force_full_denoise=False, noise_mask=None, sigmas=None,
    callback=None, disable_pbar=False, seed=None,
):  # fmt: skip
    if sampler_name not in SAMPLER_NAMES or scheduler not in SCHEDULER_NAMES:
        raise ValueError(f"unknown sampler {sampler_name!r} or scheduler {scheduler!r}")
    if sampler_name != "euler" or scheduler not in SCHEDULERS_RUN:
        raise NotImplementedError(
            f"the ComfyUI double runs euler with normal/simple only, not {sampler_name}/{scheduler}"
        )
    comfy.model_management.load_models_gpu([model])
    base = model.model
    ms = model.get_model_object("model_sampling")
    device = model.load_device
    sigmas = SCHEDULERS_RUN[scheduler](ms, steps).to(device)
    latent = base.process_latent_in(latent_image.to(device))
    x = ms.noise_scaling(sigmas[0], noise.to(device), latent, max_denoise=True)
    n = x.shape[0]
    cond = _cond_tensor(positive).to(device).expand(n, -1, -1)
    uncond = _cond_tensor(negative).to(device).expand(n, -1, -1)
    extra = {}
    if getattr(base, "adm_channels", 0):  # SDXL: the adm vector y from each conditioning's dict (encode_adm)
        size = {"width": noise.shape[-1] * 8, "height": noise.shape[-2] * 8}  # comfy/samplers.py defaults
        ys = [base.encode_adm(**{**size, **c[0][1]}).to(device).expand(n, -1) for c in (positive, negative)]
        extra["y"] = torch.cat(ys)
    options = dict(model.model_options.get("transformer_options", {}))
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        batch = torch.cat([x, x])
        out = base.apply_model(
            batch, sigma.repeat(2 * n), c_crossattn=torch.cat([cond, uncond]), transformer_options=options, **extra
        ).to(x.dtype)
        positive_x0, negative_x0 = out.chunk(2)
        denoised = negative_x0 + (positive_x0 - negative_x0) * cfg
        if callback is not None:
            callback(i, denoised, x, len(sigmas) - 1)
        x = x + (x - denoised) / sigma * (sigmas[i + 1] - sigma)
    x = ms.inverse_noise_scaling(sigmas[-1], x)
    return base.process_latent_out(x).to(comfy.model_management.intermediate_device())
