"""The model backend: everything the SPARE algorithm needs from a diffusion model.

The algorithm modules (saliency, timestep profile, trainer, evaluation) only
talk to this interface, so the same code serves a diffusers pipeline (the toy
model, Stable Diffusion checkpoints) and a ComfyUI MODEL/CLIP pair, whose
backend lives with the nodes because it imports comfy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import nn

#: Architectures a backend may report; they decide LoRA key naming and metadata.
ARCHITECTURES = ("toy", "sd1", "sd2", "sdxl")


@dataclass
class Conditioning:
    """Encoded prompts: the cross-attention states, plus what some UNets also need (SDXL)."""

    hidden_states: torch.Tensor  # [N, tokens, dim]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    def select(self, index: torch.Tensor | slice) -> Conditioning:
        return Conditioning(self.hidden_states[index], {k: v[index] for k, v in self.extra.items()})

    def repeat(self, n: int) -> Conditioning:
        """Each prompt repeated ``n`` times in place (a, a, b, b, ...)."""
        return Conditioning(
            self.hidden_states.repeat_interleave(n, 0), {k: v.repeat_interleave(n, 0) for k, v in self.extra.items()}
        )

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Several conditionings as one batch, in order."""
        keys = parts[0].extra.keys()
        return Conditioning(
            torch.cat([p.hidden_states for p in parts]), {k: torch.cat([p.extra[k] for p in parts]) for k in keys}
        )

    def detached_clone(self) -> Conditioning:
        """A normal (non-inference) copy that autograd may save for backward."""
        return Conditioning(self.hidden_states.detach().clone(), {k: v.detach().clone() for k, v in self.extra.items()})


@runtime_checkable
class DiffusionBackend(Protocol):
    """A text-to-image diffusion model as the algorithm sees it."""

    arch: str
    num_train_timesteps: int

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """Cumulative signal fraction per training timestep, float32 on CPU."""
        ...

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one latent at the default resolution."""
        ...

    @property
    def image_size(self) -> int:
        """Side in pixels of the images the model draws at its default resolution."""
        ...

    def denoiser(self) -> nn.Module:
        """The module whose Linear/Conv layers may carry an adapter (the UNet)."""
        ...

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning: ...

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Differentiable epsilon prediction (v-prediction models are converted)."""
        ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to (scaled) latents."""
        ...

    def sample(self, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance_scale: float) -> torch.Tensor:
        """One image per (prompt, seed), [N, 3, H, W] in [-1, 1]."""
        ...


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward diffusion ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`` for per-sample timesteps ``t``."""
    a = alphas_cumprod.to(x0.device)[t.to(alphas_cumprod.device).long()].to(x0.dtype)
    a = a.view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear and Conv2d of ``model`` by dotted name: the candidates for an adapter."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
