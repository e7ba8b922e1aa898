"""The engine's backend contract over a ComfyUI MODEL (``ModelPatcher``), CLIP and VAE.

ComfyUI works in sigma space: a noisy latent is ``x = x0 + sigma * noise`` with
``sigma_t = sqrt((1 - a_t) / a_t)`` from the model's discrete schedule
(``model_sampling.sigmas``), the network reads ``x / sqrt(sigma^2 + 1)`` and
``apply_model`` returns the denoised ``x0`` (``comfy/model_base.py``,
``comfy/model_sampling.py``). The contract works in the variance-preserving form
``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise``. Since ``sqrt(a_t) = 1 / sqrt(sigma^2 + 1)``
and ``sqrt(1 - a_t) = sigma / sqrt(sigma^2 + 1)``, the two differ by one factor:
``x_t = x / sqrt(sigma_t^2 + 1)``, which is exactly what the network reads. So:

- ``add_noise``: ``(x0 + sigma_t noise) / sqrt(sigma_t^2 + 1)``, the scheduler's own noising;
- ``predict_noise``: ``x = x_t sqrt(sigma_t^2 + 1)``, ``x0 = apply_model(x, sigma_t)``,
  ``eps = (x - x0) / sigma_t``: right for EPS and V_PREDICTION models alike, since
  ``apply_model`` already converts the model's output to ``x0``. The arithmetic around
  the model runs in float64 so that small sigmas lose no precision.

SDXL (a MODEL with ``adm_in_channels``) also reads ``y``, the "adm" vector ComfyUI's
``model_base.SDXL.encode_adm`` makes from the CLIP's pooled output and the size
conditioning (height, width, crop, target size): ``encode_prompts`` returns it as the
``y`` extra (sizes = the drawing size, crop 0, as ``CLIPTextEncodeSDXL`` with equal
sizes), ``predict_noise`` hands it to ``apply_model``, and ``sample`` puts the pooled
output and sizes in the conditioning's dict, from which ComfyUI's sampler makes ``y``.

The denoiser is ``MODEL.model.diffusion_model``, the module every clone of the MODEL
shares, with ComfyUI's CompVis module names (``input_blocks.1.1.transformer_blocks.0.attn2.to_k``).
The engine's adapters attach forward hooks to it only inside ``adapter.applied()``
blocks; this backend adds no patches and leaves nothing attached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._engine import architectures, engine, lora_naming
from ._engine import backend as contract

if TYPE_CHECKING:
    from spare_core.domain import Domain

Conditioning = contract.Conditioning

#: Default image side per architecture when none is given (SD 2.x v-prediction models are 768 px).
_DEFAULT_IMAGE_SIZE = {"sd1": 512, "sd2": 512, "sdxl": 1024}
#: Prompts per batch when sampling (each image still from its own seed's noise).
SAMPLE_BATCH = 16


def detect_arch(unet_config: Mapping[str, Any]) -> str:
    """``sd1``, ``sd2`` or ``sdxl`` from ComfyUI's unet_config (cross-attention width, adm), never from a file name."""
    dim = unet_config.get("context_dim")
    if unet_config.get("adm_in_channels"):
        if dim == 2048:
            return "sdxl"
        raise ValueError(
            f"this MODEL has pooled/size conditioning with context_dim {dim}: of those only SDXL (2048) is handled"
        )
    if dim == 768:
        return "sd1"
    if dim == 1024:
        return "sd2"
    raise ValueError(f"unsupported MODEL: context_dim {dim} is neither SD1 (768) nor SD2 (1024)")


def diffusers_layout(unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """The diffusers block layout (block types, layers per block) of a ComfyUI unet_config.

    ComfyUI's ``comfy/model_detection.py`` records ``num_res_blocks`` per level,
    ``transformer_depth`` per input ResBlock (input order) and ``transformer_depth_output``
    per output block from the last output block to the first; a level has
    attentions when its first block has a transformer.
    """
    try:
        levels = len(unet_config["channel_mult"])
        res = unet_config["num_res_blocks"]
        depth_in = unet_config["transformer_depth"]
        depth_out = unet_config["transformer_depth_output"]
    except KeyError as e:
        raise ValueError(
            f"the MODEL's unet_config has no {e.args[0]!r}: pass unet_config= with a diffusers layout"
        ) from e
    res = [int(res)] * levels if isinstance(res, int) else [int(r) for r in res]
    if isinstance(depth_in, int):
        depth_in = [depth_in] * sum(res)
    depth_out_in_order = list(reversed(list(depth_out)))
    down, up = [], []
    for b in range(levels):
        down.append("CrossAttnDownBlock2D" if depth_in[sum(res[:b])] > 0 else "DownBlock2D")
    up_res = list(reversed(res))
    for b in range(levels):
        start = sum(r + 1 for r in up_res[:b])
        up.append("CrossAttnUpBlock2D" if depth_out_in_order[start] > 0 else "UpBlock2D")
    middle = unet_config.get("transformer_depth_middle", 1)
    if middle is None or middle < 1:
        raise ValueError("the MODEL's middle block has no transformer: no CompVis/diffusers layout for it here")
    return {
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": res,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
    }


def _equal_length(parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Cross-attention states of different token counts (long prompts: 77 per chunk) repeated to a common
    length, as ComfyUI's ``CONDCrossAttn.concat`` does when it batches conditionings."""
    lengths = {p.shape[1] for p in parts}
    if len(lengths) == 1:
        return parts
    common = math.lcm(*lengths)
    return [p.repeat(1, common // p.shape[1], 1) for p in parts]


def _runs(prompts: Sequence[str], limit: int) -> list[tuple[int, int]]:
    """(start, end) of each run of equal consecutive prompts, at most ``limit`` long."""
    runs, start = [], 0
    for i in range(1, len(prompts) + 1):
        if i == len(prompts) or prompts[i] != prompts[start] or i - start == limit:
            runs.append((start, i))
            start = i
    return runs


class ComfyBackend:
    """A ComfyUI MODEL + CLIP (+ VAE) as a :class:`spare_core.backend.DiffusionBackend`."""

    conditioning_extras: tuple[str, ...] = ()

    def __init__(
        self,
        model,
        clip,
        vae=None,
        domain: Domain | None = None,
        arch: str | None = None,
        image_size: int | None = None,
        unet_config: Mapping[str, Any] | None = None,
        sampler_name: str = "euler",
        scheduler: str = "normal",
    ):
        import comfy.model_management

        self.sampler_name, self.scheduler = sampler_name, scheduler
        self.model = model
        self.clip = clip
        self.vae = vae
        self.domain = domain
        comfy.model_management.load_models_gpu([model])
        comfy_config = model.model.model_config.unet_config
        self.arch = arch or detect_arch(comfy_config)
        architectures.get_architecture(self.arch)  # a registered architecture, or ValueError
        self._unet_config = dict(unet_config) if unet_config is not None else diffusers_layout(comfy_config)
        self._in_channels = int(comfy_config.get("in_channels", 4))
        self._adm = bool(comfy_config.get("adm_in_channels"))
        self.conditioning_extras = ("y",) if self._adm else ()
        self.num_train_timesteps = int(self._model_sampling().sigmas.shape[0])
        if image_size is None:
            if self.arch not in _DEFAULT_IMAGE_SIZE:
                raise ValueError(f"give image_size for a {self.arch!r} model")
            image_size = _DEFAULT_IMAGE_SIZE[self.arch]
        self._image_size = int(image_size)
        self._native_image_size = self._image_size
        self._layer_table: dict[str, str] | None = None

    # ------------------------------------------------------------------ model settings

    def configure(self, resolution: int = 0, prediction: str = "") -> None:
        """The model-level settings (contract item 9). ``resolution`` sets the drawing size (0: the size given
        when the backend was made). ComfyUI decides the prediction type in the MODEL itself (its
        ModelSamplingDiscrete node overrides it), so ``prediction`` must agree with the MODEL's."""
        import comfy.model_base

        multiple = self._downscale * 2 ** (len(self.model.model.model_config.unet_config.get("channel_mult", [1])) - 1)
        side = contract.check_resolution(int(resolution), multiple, self._native_image_size)
        own = {comfy.model_base.ModelType.EPS: "eps", comfy.model_base.ModelType.V_PREDICTION: "v"}.get(
            getattr(self.model.model, "model_type", None)
        )
        if prediction and prediction != own:
            raise engine.SettingsError(
                f"this MODEL predicts {own or 'something else'}, not {prediction}: in ComfyUI set the prediction "
                "type with a ModelSamplingDiscrete node before the SPARE nodes, and leave prediction empty here"
            )
        self._image_size = side

    # ------------------------------------------------------------------ what the model is

    def _model_sampling(self):
        return self.model.get_model_object("model_sampling")

    def _sigmas(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        """sigma of integer training timesteps (the discrete table), float64."""
        sigmas = self._model_sampling().sigmas
        return sigmas[t.to(sigmas.device).long()].to(device, torch.float64)

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.load_device)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model_dtype()

    @property
    def _downscale(self) -> int:
        return int(getattr(self.vae, "downscale_ratio", 8)) if self.vae is not None else 8

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self._image_size // self._downscale
        return (self._in_channels, side, side)

    @property
    def image_size(self) -> int:
        return self._image_size

    def denoiser(self) -> nn.Module:
        return self.model.model.diffusion_model

    # ------------------------------------------------------------------ the forward process and the prediction

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self._sigmas(t, x0.device).view(-1, *([1] * (x0.dim() - 1)))
        c = 1.0 / torch.sqrt(s * s + 1.0)
        return (c * x0.double() + (s * c) * noise.double()).to(x0.dtype)

    def _denoised(
        self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``apply_model`` on a sigma-space input, with the MODEL's transformer options (and SDXL's ``y``)."""
        options = dict(self.model.model_options.get("transformer_options", {}))
        options["sigmas"] = sigma
        extra = {"y": y.to(self.device)} if y is not None else {}
        return self.model.model.apply_model(
            x, sigma, c_crossattn=context.to(self.device), transformer_options=options, **extra
        )

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        device = x_t.device
        sigma = self._sigmas(t, device)
        s = sigma.view(-1, *([1] * (x_t.dim() - 1)))
        x = x_t.to(device, torch.float64) * torch.sqrt(s * s + 1.0)
        denoised = self._denoised(x, sigma, cond.hidden_states, cond.extra.get("y"))
        return ((x - denoised.to(torch.float64)) / s).to(x_t.dtype)

    # ------------------------------------------------------------------ prompts and images

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Each prompt as ComfyUI's CLIPTextEncode encodes it (``tokenize`` + ``encode_from_tokens_scheduled``)."""
        parts, ys = [], []
        for prompt in prompts:
            encoded = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))
            parts.append(encoded[0][0])
            if self._adm:
                ys.append(self.model.model.encode_adm(**encoded[0][1], **self._size_conditioning()))
        hidden = torch.cat(_equal_length(parts))
        extra = {"y": torch.cat(ys).to(self.device, self.dtype)} if self._adm else {}
        return Conditioning(hidden.to(self.device, self.dtype), extra)

    def _size_conditioning(self) -> dict[str, int]:
        """SDXL's size conditioning as ComfyUI's conditioning dicts spell it: the drawing size, no crop."""
        side = self._image_size
        return dict(width=side, height=side, crop_w=0, crop_h=0, target_width=side, target_height=side)

    def _with_sizes(self, conditioning: list) -> list:
        """A CLIPTextEncode conditioning with the size conditioning added to each dict (SDXL only)."""
        if not self._adm:
            return conditioning
        return [[c, {**d, **self._size_conditioning()}] for c, d in conditioning]

    def _need_vae(self):
        if self.vae is None:
            raise ValueError("this step needs the checkpoint's VAE: connect a VAE to the node")
        return self.vae

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        vae = self._need_vae()
        pixels = ((images.float() + 1.0) / 2.0).clamp(0, 1).movedim(1, -1)  # ComfyUI IMAGE: [N, H, W, C] in [0, 1]
        latents = self.model.model.process_latent_in(vae.encode(pixels))
        return latents.to(self.device, self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE-space latents (what ``comfy.sample.sample`` returns) to images [N, 3, H, W] in [-1, 1]."""
        pixels = self._need_vae().decode(latents.float())
        return pixels.movedim(-1, 1).float().cpu() * 2 - 1

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int,
        guidance_scale: float,
        on_step: contract.StepCallback | None = None,
    ) -> torch.Tensor:
        """ComfyUI's own sampling (``comfy.sample.sample``, as KSampler runs it) with this backend's sampler and
        scheduler, classifier-free guidance against the empty prompt, then the VAE.

        Consecutive images of one prompt are drawn as one batch; each image's noise comes from its own seed.
        """
        import comfy.sample

        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        negative = self._with_sizes(self.clip.encode_from_tokens_scheduled(self.clip.tokenize("")))
        callback = (lambda step, x0, x, total: on_step()) if on_step is not None else None
        out = []
        for start, end in _runs(prompts, SAMPLE_BATCH):
            positive = self._with_sizes(self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompts[start])))
            noise = torch.stack(
                [
                    torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s)))
                    for s in seeds[start:end]
                ]
            )
            empty = torch.zeros_like(noise)
            latents = comfy.sample.sample(
                self.model, noise, steps, guidance_scale, self.sampler_name, self.scheduler, positive, negative,
                empty, callback=callback, disable_pbar=True, seed=int(seeds[start]),
            )  # fmt: skip
            out.append(self.decode_latents(latents))
        return torch.cat(out)

    # ------------------------------------------------------------------ module names

    def lora_layer_names(self, module_names: Sequence[str]) -> dict[str, str]:
        """CompVis module name -> kohya layer name in this architecture's file spelling."""
        naming = architectures.get_architecture(self.arch).naming
        names = {}
        for name in module_names:
            path = lora_naming.compvis_to_diffusers(name, self._unet_config) if naming == "diffusers" else name
            names[name] = lora_naming.to_kohya_key(path)
        if len(set(names.values())) != len(names):
            raise ValueError("two modules map to the same kohya layer name")
        return names

    def lora_layer_table(self) -> Mapping[str, str]:
        """kohya layer name in either spelling (CompVis or diffusers) -> CompVis module name."""
        if self._layer_table is None:
            table: dict[str, str] = {}
            for name in contract.adaptable_modules(self.denoiser()):
                spellings = [name]
                try:
                    spellings.append(lora_naming.compvis_to_diffusers(name, self._unet_config))
                except ValueError:
                    pass
                for path in spellings:
                    layer = lora_naming.to_kohya_key(path)
                    if table.setdefault(layer, name) != name:
                        raise ValueError(f"kohya layer name {layer!r} means both {table[layer]!r} and {name!r}")
            self._layer_table = table
        return self._layer_table
