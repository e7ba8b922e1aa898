"""Double of ComfyUI ``comfy/model_base.py``: BaseModel (diffusion_model + model_sampling + apply_model)."""

from __future__ import annotations

from enum import Enum

import torch

from . import model_sampling as ms


class ModelType(Enum):
    EPS = 1
    V_PREDICTION = 2


def model_sampling(model_config, model_type: ModelType):
    prediction = {ModelType.EPS: ms.EPS, ModelType.V_PREDICTION: ms.V_PREDICTION}[model_type]

    class ModelSampling(ms.ModelSamplingDiscrete, prediction):
        pass

    return ModelSampling(model_config)


class BaseModel(torch.nn.Module):
    """A model config, a ``diffusion_model`` (CompVis module names) and its ``model_sampling``."""

    def __init__(self, model_config, diffusion_model: torch.nn.Module, model_type=ModelType.EPS, device=None):
        super().__init__()
        self.model_config = model_config
        self.latent_format = model_config.latent_format
        self.manual_cast_dtype = None
        self.device = device
        self.current_patcher = None
        self.diffusion_model = diffusion_model
        self.model_type = model_type
        self.model_sampling = model_sampling(model_config, model_type)
        self.adm_channels = model_config.unet_config.get("adm_in_channels") or 0

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        """Denoised x0 for a sigma-space input ``x`` at sigma ``t`` (ComfyUI ``_apply_model``)."""
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat.to(xc.device, xc.dtype)], dim=1)
        dtype = self.manual_cast_dtype or self.get_dtype()
        xc = xc.to(dtype)
        timestep = self.model_sampling.timestep(t).float()
        context = None if c_crossattn is None else c_crossattn.to(xc.device, dtype)
        extra = {"y": kwargs["y"].to(xc.device, dtype)} if kwargs.get("y") is not None else {}  # the adm vector
        model_output = self.diffusion_model(
            xc, timestep, context=context, control=control, transformer_options=transformer_options or {}, **extra
        ).float()
        return self.model_sampling.calculate_denoised(sigma, model_output, x)

    def get_dtype(self):
        return self.diffusion_model.dtype

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)


def _sinusoid(value: float, dim: int) -> torch.Tensor:
    """ComfyUI ``Timestep(dim)`` of one number (``openaimodel.timestep_embedding``: cos half, then sin half)."""
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.tensor([float(value)]) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)])


class SDXL(BaseModel):
    """ComfyUI ``model_base.SDXL``: ``encode_adm`` = pooled output + Timestep embeddings of height, width,
    crop_h, crop_w, target_height, target_width (defaults as ComfyUI's). The embedding width is the model
    config's ``adm_size_dim`` (ComfyUI: 256; smaller in the reduced test model)."""

    def encode_adm(self, **kwargs):
        pooled = kwargs["pooled_output"]
        width, height = kwargs.get("width", 768), kwargs.get("height", 768)
        sizes = [
            height, width, kwargs.get("crop_h", 0), kwargs.get("crop_w", 0),
            kwargs.get("target_height", height), kwargs.get("target_width", width),
        ]  # fmt: skip
        dim = self.model_config.unet_config["adm_size_dim"]
        flat = torch.cat([_sinusoid(v, dim) for v in sizes]).unsqueeze(0).repeat(pooled.shape[0], 1)
        return torch.cat((pooled.float().cpu(), flat), dim=1)
