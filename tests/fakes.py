"""A tiny fake backend whose behaviour is known exactly, for testing the algorithm modules.

It implements the whole backend contract (``spare_core/backend.py``) and runs in
``tests/test_backend_contract.py`` next to the real backends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from spare_core.backend import Conditioning, StepCallback, adaptable_modules, vp_add_noise


class TinyDenoiser(nn.Module):
    """eps = image_head(x_t) + text_head(mean prompt embedding + pooled) * w(t)."""

    def __init__(self, channels: int = 4, dim: int = 8):
        super().__init__()
        self.image_head = nn.Conv2d(channels, channels, 1)
        self.text_head = nn.Linear(dim, channels)


class FakeBackend:
    """Prompts embed as fixed vectors; the text influence is scaled by ``w(t)``.

    ``encode_prompts`` also returns a ``pooled`` extra (zero unless ``pooled`` gives
    a vector per prompt) that ``predict_noise`` adds to the text term, so the
    contract's conditioning extras have something to reach.
    """

    arch = "toy"
    conditioning_extras: tuple[str, ...] = ("pooled",)
    domain = None

    def __init__(
        self,
        embeddings: dict[str, torch.Tensor],
        weight_of_t: Callable[[int], float],
        num_train_timesteps: int = 100,
        pooled: dict[str, torch.Tensor] | None = None,
    ):
        self.embeddings = embeddings
        self.pooled = pooled or {}
        self.weight_of_t = weight_of_t
        self.num_train_timesteps = num_train_timesteps
        self.dim = next(iter(embeddings.values())).numel()
        torch.manual_seed(0)
        self.model = TinyDenoiser(dim=self.dim)
        self.model.requires_grad_(False)

    device = torch.device("cpu")
    dtype = torch.float32

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.linspace(0.999, 0.01, self.num_train_timesteps)

    @property
    def latent_shape(self):
        return (4, 4, 4)

    image_size = 4  # encode_images appends the channel mean to a [3, 4, 4] image

    def denoiser(self) -> nn.Module:
        return self.model

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return vp_add_noise(x0, noise, t, self.alphas_cumprod)

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        hidden = torch.stack([self.embeddings[p] for p in prompts]).unsqueeze(1)
        pooled = torch.stack([self.pooled.get(p, torch.zeros(self.dim)) for p in prompts])
        return Conditioning(hidden, {"pooled": pooled})

    def predict_noise(self, x_t, t, cond):
        text = self.model.text_head(cond.hidden_states.mean(1) + cond.extra["pooled"])  # [N, C]
        w = torch.tensor([self.weight_of_t(int(s)) for s in t], dtype=x_t.dtype).view(-1, 1)
        return self.model.image_head(x_t) + (text * w).view(len(x_t), -1, 1, 1)

    def encode_images(self, images):
        return torch.cat([images, images.mean(1, keepdim=True)], 1)

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int,
        guidance_scale: float,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """A fake denoising loop: each image from its own seed's noise, ``on_step`` after every step."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        cond = self.encode_prompts(prompts)
        x = torch.stack(
            [torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        )
        for t in torch.linspace(self.num_train_timesteps - 1, 0, steps).long():
            x = x - self.predict_noise(x, t.repeat(len(x)), cond) / steps
            if on_step is not None:
                on_step()
        return torch.tanh(x[:, :3])

    def lora_layer_names(self, module_names: Sequence[str]) -> dict[str, str]:
        return {name: "lora_unet_" + name.replace(".", "_") for name in module_names}

    def lora_layer_table(self) -> Mapping[str, str]:
        return {layer: name for name, layer in self.lora_layer_names(list(adaptable_modules(self.model))).items()}
