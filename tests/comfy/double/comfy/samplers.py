"""Double of ComfyUI ``comfy/samplers.py``: the sampler and scheduler names, and the two schedulers it runs.

The name lists are ComfyUI's (``KSAMPLER_NAMES``, ``SAMPLER_NAMES``,
``SCHEDULER_HANDLERS`` keys), so node inputs built from them match a real
ComfyUI. The double runs only the ``euler`` sampler with the ``normal`` or
``simple`` scheduler (``comfy/sample.py`` here); the others raise.
"""

from __future__ import annotations

import math

import torch

KSAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece",
]  # fmt: skip
SAMPLER_NAMES = KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"]
SCHEDULER_NAMES = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
]  # fmt: skip


def normal_scheduler(model_sampling, steps: int) -> torch.Tensor:
    """``steps`` sigmas evenly spaced in timestep from sigma_max to sigma_min, then 0 (``normal_scheduler``)."""
    s = model_sampling
    start, end = s.timestep(s.sigma_max), s.timestep(s.sigma_min)
    append_zero = True
    if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
        steps += 1
        append_zero = False
    timesteps = torch.linspace(float(start), float(end), steps)
    sigmas = [float(s.sigma(ts)) for ts in timesteps]
    return torch.FloatTensor(sigmas + ([0.0] if append_zero else []))


def simple_scheduler(model_sampling, steps: int) -> torch.Tensor:
    """Every ``len(sigmas) / steps``-th training sigma from the top, then 0 (``simple_scheduler``)."""
    s = model_sampling
    stride = len(s.sigmas) / steps
    return torch.FloatTensor([float(s.sigmas[-(1 + int(x * stride))]) for x in range(steps)] + [0.0])


SCHEDULERS_RUN = {"normal": normal_scheduler, "simple": simple_scheduler}


class KSampler:
    SCHEDULERS = SCHEDULER_NAMES
    SAMPLERS = SAMPLER_NAMES
