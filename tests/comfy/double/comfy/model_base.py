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
        model_output = self.diffusion_model(
            xc, timestep, context=context, control=control, transformer_options=transformer_options or {}
        ).float()
        return self.model_sampling.calculate_denoised(sigma, model_output, x)

    def get_dtype(self):
        return self.diffusion_model.dtype

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)
