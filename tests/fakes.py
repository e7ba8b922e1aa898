"""A tiny fake backend whose behaviour is known exactly, for testing the algorithm modules."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from spare_core.backend import Conditioning


class TinyDenoiser(nn.Module):
    """eps = image_head(x_t) + text_head(pooled prompt embedding) * w(t)."""

    def __init__(self, channels: int = 4, dim: int = 8):
        super().__init__()
        self.image_head = nn.Conv2d(channels, channels, 1)
        self.text_head = nn.Linear(dim, channels)


class FakeBackend:
    """Prompts embed as fixed vectors; the text influence is scaled by ``w(t)``."""

    arch = "toy"

    def __init__(self, embeddings: dict[str, torch.Tensor], weight_of_t, num_train_timesteps: int = 100):
        self.embeddings = embeddings
        self.weight_of_t = weight_of_t
        self.num_train_timesteps = num_train_timesteps
        torch.manual_seed(0)
        self.model = TinyDenoiser(dim=next(iter(embeddings.values())).numel())
        self.model.requires_grad_(False)

    device = torch.device("cpu")
    dtype = torch.float32

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.linspace(0.999, 0.01, self.num_train_timesteps)

    @property
    def latent_shape(self):
        return (4, 4, 4)

    image_size = 4  # encode_images is the identity on [4, 4, 4] "images"

    def denoiser(self) -> nn.Module:
        return self.model

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        return Conditioning(torch.stack([self.embeddings[p] for p in prompts]).unsqueeze(1))

    def predict_noise(self, x_t, t, cond):
        text = self.model.text_head(cond.hidden_states.mean(1))  # [N, C]
        w = torch.tensor([self.weight_of_t(int(s)) for s in t], dtype=x_t.dtype).view(-1, 1)
        return self.model.image_head(x_t) + (text * w).view(len(x_t), -1, 1, 1)

    def encode_images(self, images):
        return images

    def sample(self, prompts, seeds, steps, guidance_scale):
        return torch.stack([torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(s)) for s in seeds])
