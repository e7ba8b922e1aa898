"""The diffusers backend: a ``StableDiffusionPipeline`` (toy, SD 1.x, SD 2.x) seen through the backend contract."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from diffusers import StableDiffusionPipeline
from torch import nn

from ..backend import Conditioning, StepCallback, adaptable_modules, check_resolution, vp_add_noise
from ..config import SettingsError
from ..lora_naming import export_layer_names, kohya_layer_table
from ..sampling import generate

if TYPE_CHECKING:
    from ..domain import Domain

logger = logging.getLogger(__name__)


def detect_arch(pipe: StableDiffusionPipeline) -> str:
    """``sd1`` or ``sd2``, from the UNet's config (never from a file name)."""
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
    """A Stable-Diffusion-style diffusers pipeline as a :class:`~spare_core.backend.DiffusionBackend`."""

    conditioning_extras: tuple[str, ...] = ()

    def __init__(self, pipe: StableDiffusionPipeline, arch: str | None = None, domain: Domain | None = None):
        self.pipe = pipe
        self.arch = arch or detect_arch(pipe)
        self.domain = domain
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self._prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
        if self._prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction type {self._prediction_type!r}; SPARE handles epsilon and v")
        self._alphas_cumprod = pipe.scheduler.alphas_cumprod.float().cpu()
        self._layer_table: dict[str, str] | None = None
        # What configure() may change: the drawing size (0: native) and the prediction type (the model's own).
        self._native_scheduler = pipe.scheduler
        self._model_prediction_type = self._prediction_type
        self._resolution = 0
        self._encoders_parked = False
        for module in self._frozen_modules():
            module.requires_grad_(False)

    def _frozen_modules(self) -> tuple[nn.Module, ...]:
        return (self.pipe.unet, self.pipe.text_encoder, self.pipe.vae)

    # ------------------------------------------------------------------ memory

    def park_encoders(self) -> None:
        """Move the text encoders and the VAE to the CPU while only the UNet works (training), on an accelerator.

        They return to the model's device on their next use (``encode_prompts``, ``encode_images``,
        ``sample``). On the CPU there is nothing to free and nothing moves.
        """
        if self.device.type == "cpu" or self._encoders_parked:
            return
        for module in self._frozen_modules():
            if module is not self.pipe.unet:
                module.to("cpu")
        self._encoders_parked = True
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        logger.info("text encoders and VAE moved to the CPU for training")

    def _unpark_encoders(self) -> None:
        if self._encoders_parked:
            for module in self._frozen_modules():
                if module is not self.pipe.unet:
                    module.to(self.device)
            self._encoders_parked = False

    # ------------------------------------------------------------------ model settings

    @property
    def _native_image_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    @property
    def _size_multiple(self) -> int:
        """Pixels per latent cell times the UNet's downsampling: every image side must be a multiple of it."""
        return self.pipe.vae_scale_factor * 2 ** (len(self.pipe.unet.config.block_out_channels) - 1)

    def configure(self, resolution: int = 0, prediction: str = "") -> None:
        """The model-level settings (contract item 9): drawing size in pixels (0: native) and the prediction type
        (``"eps"``/``"v"``; ``""``: the scheduler's own). A forced type applies to ``predict_noise`` and to the
        sampler (the pipeline gets a copy of its scheduler with that ``prediction_type``)."""
        kinds = {"": self._model_prediction_type, "eps": "epsilon", "v": "v_prediction"}
        if prediction not in kinds:
            raise SettingsError(f"unknown prediction {prediction!r}; use eps, v, or empty for the model's own")
        check_resolution(int(resolution), self._size_multiple, self._native_image_size)
        self._resolution = int(resolution)
        self._prediction_type = kinds[prediction]
        native = self._native_scheduler
        if self._prediction_type == self._model_prediction_type:
            self.pipe.scheduler = native
        else:
            self.pipe.scheduler = type(native).from_config(native.config, prediction_type=self._prediction_type)

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self._resolution // self.pipe.vae_scale_factor if self._resolution else self.pipe.unet.config.sample_size
        return (self.pipe.unet.config.in_channels, size, size)

    @property
    def image_size(self) -> int:
        return self._resolution or self._native_image_size

    def denoiser(self) -> nn.Module:
        return self.pipe.unet

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return vp_add_noise(x0, noise, t, self._alphas_cumprod)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        self._unpark_encoders()
        tok = self.pipe.tokenizer
        ids = tok(
            list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.pipe.text_encoder.device)
        hidden = self.pipe.text_encoder(ids)[0]
        return Conditioning(hidden.to(self.dtype))

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        extras = {k: v for k, v in cond.extra.items()}
        out = self.pipe.unet(x_t, t, encoder_hidden_states=cond.hidden_states, added_cond_kwargs=extras or None).sample
        if self._prediction_type == "epsilon":
            return out
        # v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022), so eps = sqrt(a) v + sqrt(1 - a) x_t.
        a = self._alphas_cumprod.to(x_t.device)[t.long()].to(x_t.dtype).view(-1, 1, 1, 1)
        return a.sqrt() * out + (1 - a).sqrt() * x_t

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        self._unpark_encoders()
        vae = self.pipe.vae
        latents = vae.encode(images.to(self.device, vae.dtype)).latent_dist.mode()
        return latents * vae.config.scaling_factor

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int,
        guidance_scale: float,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        self._unpark_encoders()
        return generate(
            self.pipe,
            prompts,
            seeds,
            steps=steps,
            guidance_scale=guidance_scale,
            on_step=on_step,
            size=self._resolution or None,
        )

    def lora_layer_names(self, module_names: Sequence[str]) -> dict[str, str]:
        return export_layer_names(module_names, self.arch, self.pipe.unet.config)

    def lora_layer_table(self) -> Mapping[str, str]:
        if self._layer_table is None:
            self._layer_table = kohya_layer_table(list(adaptable_modules(self.pipe.unet)), self.pipe.unet.config)
        return self._layer_table
