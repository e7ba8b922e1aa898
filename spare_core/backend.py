"""The backend contract: everything the SPARE algorithm needs from a diffusion model, and nothing else.

The algorithm modules (data generation, timestep profile, saliency, trainer,
preview, LoRA export) talk only to :class:`DiffusionBackend`. A diffusers
pipeline (the toy model, Stable Diffusion folders), an SDXL pipeline and a
ComfyUI MODEL/CLIP pair each implement it; the engine never learns which it has.

The contract, in words (``tests/test_backend_contract.py`` checks it on every backend):

1. **Timesteps.** Training timesteps are integers ``0 .. num_train_timesteps - 1``
   (0 is a clean image). A backend that works in sigmas (ComfyUI) converts.
2. **Noising.** ``add_noise(x0, noise, t)`` is the model's own forward process at
   timestep ``t`` per sample: for variance-preserving models
   ``sqrt(a_t) x0 + sqrt(1 - a_t) noise``, exactly what its scheduler does. Its
   output is what ``predict_noise`` takes.
3. **Prediction.** ``predict_noise(x_t, t, cond)`` returns epsilon, the noise in
   ``x_t``, whatever the model's own parameterisation (v-prediction and x0
   outputs are converted). It is differentiable with respect to the weights of
   ``denoiser()`` and to adapters attached to them.
4. **Conditioning.** ``encode_prompts`` returns a :class:`Conditioning`:
   ``hidden_states`` for cross-attention plus ``extra`` tensors the model also
   reads (SDXL: pooled text embeddings and size conditioning), each with the
   batch as its first dimension. ``predict_noise`` passes every extra on;
   ``conditioning_extras`` names them.
5. **Modules.** ``denoiser()`` is the module whose Linear/Conv2d layers may carry
   an adapter, named as the backend names them. ``lora_layer_names`` maps those
   names to the kohya layer names a LoRA file for this architecture uses, and
   ``lora_layer_table`` maps every kohya spelling a file may use back to them.
6. **Images.** ``encode_images`` takes ``[N, 3, image_size, image_size]`` in
   [-1, 1] and returns latents of ``latent_shape``; ``sample`` draws one image per
   (prompt, seed), each from its own seed's noise, calling ``on_step`` after
   every denoising step (cancel checks run there).
7. **Inference tensors.** Weights, latents and conditioning may have been made
   under ``torch.inference_mode()`` (ComfyUI); the engine clones what it saves
   for backward, the backend must not make that impossible.
8. **Domain.** ``domain`` is the prompt world the model comes with (the toy model
   supplies its own), or ``None`` for the generic defaults.
9. **Model settings (optional method).** ``configure(resolution=0, prediction="")``
   applies the two model-level settings of :class:`~spare_core.config.ErasureConfig`:
   ``resolution`` is the square side in pixels of what ``sample`` draws and
   ``encode_images`` takes (``image_size`` and ``latent_shape`` follow it; 0 is the
   model's native size); ``prediction`` forces the model's output type (``"eps"``
   or ``"v"``; ``""`` is what the model itself says), for predictions and sampling
   alike. A value the model cannot take raises ``SettingsError`` saying what to
   use instead. The setting holds until the next call, and ``configure()`` with no
   arguments restores the model's own behaviour. Every stage calls it first with
   its config's values (:func:`apply_model_settings`), so a stage always runs with
   its own settings; anything run afterwards on the same backend (previews) uses
   the last stage's. A backend without ``configure`` runs only with the defaults.
10. **Memory (optional method).** ``park_encoders()`` may move what training does
    not use (text encoders, VAE) off the accelerator; ``train`` calls it before its
    first step. Such parts return on their next use (``encode_prompts``,
    ``encode_images``, ``sample``), so the caller never moves them back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from .domain import Domain


@dataclass
class Conditioning:
    """Encoded prompts: the cross-attention states, plus what some models also read (SDXL)."""

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


StepCallback = Callable[[], None]


@runtime_checkable
class DiffusionBackend(Protocol):
    """A text-to-image diffusion model as the algorithm sees it (see the module docstring)."""

    #: Key of the model's architecture in :mod:`spare_core.architectures`.
    arch: str
    num_train_timesteps: int
    #: Names of the :attr:`Conditioning.extra` tensors the model reads (empty for SD 1.x/2.x).
    conditioning_extras: tuple[str, ...]
    #: The prompt world the model comes with, or None for the generic defaults.
    domain: Domain | None

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one latent at the default resolution."""
        ...

    @property
    def image_size(self) -> int:
        """Side in pixels of the images the model draws at its default resolution."""
        ...

    def denoiser(self) -> nn.Module:
        """The module whose Linear/Conv2d layers may carry an adapter (the UNet)."""
        ...

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The forward process at integer training timesteps ``t`` (one per sample)."""
        ...

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Differentiable epsilon prediction at integer training timesteps ``t``."""
        ...

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning: ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to latents."""
        ...

    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int,
        guidance_scale: float,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """One image per (prompt, seed), [N, 3, H, W] in [-1, 1]; ``on_step`` after every denoising step."""
        ...

    def lora_layer_names(self, module_names: Sequence[str]) -> dict[str, str]:
        """Module name -> kohya layer name (``lora_unet_...``) in this architecture's file spelling."""
        ...

    def lora_layer_table(self) -> Mapping[str, str]:
        """Every kohya layer name a file may use for this model (any spelling) -> module name."""
        ...


def apply_model_settings(backend: DiffusionBackend, resolution: int = 0, prediction: str = "") -> None:
    """``backend.configure(resolution, prediction)``; a backend without ``configure`` accepts only the defaults."""
    configure = getattr(backend, "configure", None)
    if configure is not None:
        configure(resolution=resolution, prediction=prediction)
    elif resolution or prediction:
        from .config import SettingsError

        raise SettingsError(
            f"this model ({type(backend).__name__}) cannot change its resolution or prediction type: "
            "leave resolution at 0 and prediction empty"
        )


def check_resolution(resolution: int, multiple: int, native: int) -> int:
    """The image side to draw at: ``native`` for 0, else ``resolution`` if it is a positive multiple of ``multiple``.

    Raises ``SettingsError`` naming the nearest sizes that fit.
    """
    from .config import SettingsError

    if resolution == 0:
        return native
    if resolution < 0 or resolution % multiple:
        below = max(multiple, (max(resolution, 0) // multiple) * multiple)
        raise SettingsError(
            f"resolution {resolution} does not fit this model: its images must be a multiple of {multiple} px "
            f"(e.g. {below} or {below + multiple}), or 0 for its native {native} px"
        )
    return resolution


def vp_add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Variance-preserving forward process ``sqrt(a_t) x0 + sqrt(1 - a_t) noise`` for per-sample timesteps ``t``.

    A helper for backends whose scheduler is described by ``alphas_cumprod``.
    """
    a = alphas_cumprod.to(x0.device)[t.to(alphas_cumprod.device).long()].to(x0.dtype)
    a = a.view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear and Conv2d of ``model`` by dotted name: the candidates for an adapter."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
