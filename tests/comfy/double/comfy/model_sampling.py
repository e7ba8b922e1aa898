"""Double of ComfyUI ``comfy/model_sampling.py``: EPS, V_PREDICTION and ModelSamplingDiscrete.

ComfyUI works in "sigma space": a noisy latent is ``x = x0 + sigma * noise``, the
network reads ``x / sqrt(sigma^2 + 1)`` (sigma_data = 1) and the sampler gets back
the denoised ``x0``. Sigmas come from the discrete betas schedule:
``sigma_t = sqrt((1 - alphas_cumprod_t) / alphas_cumprod_t)``.
"""

from __future__ import annotations

import math

import torch


def _reshape_sigma(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    # A scalar sigma broadcasts as is; a batch of sigmas gets one per sample.
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


class EPS:
    """The network predicts the noise."""

    def calculate_input(self, sigma, noise):
        sigma = _reshape_sigma(sigma, noise.ndim)
        return noise / (sigma**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = _reshape_sigma(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = _reshape_sigma(sigma, noise.ndim)
        scale = torch.sqrt(1.0 + sigma**2.0) if max_denoise else sigma
        return noise * scale + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class V_PREDICTION(EPS):
    """The network predicts v (Salimans & Ho); denoised = x s_d^2/(s^2+s_d^2) - v s s_d / sqrt(s^2+s_d^2)."""

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = _reshape_sigma(sigma, model_output.ndim)
        total = sigma**2 + self.sigma_data**2
        return model_input * self.sigma_data**2 / total - model_output * sigma * self.sigma_data / total**0.5


def make_beta_schedule(schedule: str, n_timestep: int, linear_start=1e-4, linear_end=2e-2) -> torch.Tensor:
    """Betas in float64 (ComfyUI ``comfy/ldm/modules/diffusionmodules/util.py`` ``make_beta_schedule``).

    ComfyUI's "linear" is linear in sqrt(beta): diffusers calls it "scaled_linear".
    """
    if schedule == "linear":
        return torch.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=torch.float64) ** 2
    if schedule == "sqrt_linear":
        return torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64)
    if schedule == "squaredcos_cap_v2":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / n_timestep) / alpha_bar(i / n_timestep), 0.999) for i in range(n_timestep)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"schedule '{schedule}' unknown.")


class ModelSamplingDiscrete(torch.nn.Module):
    def __init__(self, model_config=None, zsnr=None):
        super().__init__()
        settings = getattr(model_config, "sampling_settings", None) or {}
        betas = make_beta_schedule(
            settings.get("beta_schedule", "linear"),
            settings.get("timesteps", 1000),
            linear_start=settings.get("linear_start", 0.00085),
            linear_end=settings.get("linear_end", 0.012),
        )
        if zsnr or settings.get("zsnr", False):
            raise NotImplementedError("the double has no zero-terminal-SNR schedule")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.num_timesteps = int(betas.shape[0])
        self.sigma_data = 1.0
        self.set_sigmas(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)

    def set_sigmas(self, sigmas):
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        """The nearest discrete timestep in log-sigma."""
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        """Log-linear interpolation between the discrete sigmas."""
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp().to(timestep.device)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()
