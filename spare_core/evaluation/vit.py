"""A Vision Transformer classifier in plain torch that reads timm's state-dict key names.

UnlearnCanvas judges generations with two ViT-Large/16 classifiers trained with
timm. timm itself imports torchvision, which does not import beside the torch
build SPARE runs on, so this module re-implements the forward pass of timm's
``VisionTransformer`` (Dosovitskiy et al. 2021, "An Image is Worth 16x16
Words") for its default configuration: a patch-embedding convolution, a class
token, learned position embeddings, pre-norm blocks (LayerNorm eps 1e-6,
multi-head self-attention with a fused qkv projection, an MLP with exact GELU),
a final LayerNorm, and a linear head on the class token. Parameter names are
timm's (``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``, ...), so a
converted timm checkpoint loads with ``load_state_dict``; the sizes are read
from the checkpoint's shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

#: timm's LayerNorm epsilon for ViTs (``partial(nn.LayerNorm, eps=1e-6)``).
LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class ViTConfig:
    """Sizes of a ViT; ``vit_large_patch16_224`` is ``ViTConfig(224, 16, 1024, 24, 16, 4096, classes)``."""

    image_size: int
    patch_size: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    num_classes: int

    @staticmethod
    def large_16(num_classes: int, image_size: int = 224) -> ViTConfig:
        return ViTConfig(image_size, 16, 1024, 24, 16, 4096, num_classes)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = _Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class ViTClassifier(nn.Module):
    """timm's ``VisionTransformer`` forward (class-token pooling) with timm's parameter names."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError(f"image size {config.image_size} is not a multiple of the patch size {config.patch_size}")
        if config.dim % config.heads:
            raise ValueError(f"width {config.dim} is not divisible by {config.heads} heads")
        self.config = config
        patches = (config.image_size // config.patch_size) ** 2
        self.patch_embed = _PatchEmbed(config.patch_size, config.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, patches + 1, config.dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(config.dim, config.heads, config.mlp_dim) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(config.dim, config.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [N, classes] of images [N, 3, S, S], already resized and normalised."""
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(f"the classifier takes {size} x {size} images, got {tuple(images.shape[-2:])}")
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], heads: int | None = None) -> ViTClassifier:
        """A classifier sized from a timm state dict's shapes, with its weights loaded.

        The head count is not in the shapes: by default it is width / 64 (timm's ViT-S/B/L all use
        64-wide heads).
        """
        missing = [k for k in ("patch_embed.proj.weight", "pos_embed", "head.weight") if k not in state]
        if missing:
            raise ValueError(f"not a timm ViT state dict: {', '.join(missing)} missing")
        dim, _, patch, _ = state["patch_embed.proj.weight"].shape
        patches = state["pos_embed"].shape[1] - 1
        side = int(round(patches**0.5))
        if side * side != patches:
            raise ValueError(f"pos_embed has {patches} patch positions, not a square grid")
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        config = ViTConfig(
            image_size=side * patch,
            patch_size=patch,
            dim=dim,
            depth=depth,
            heads=heads or max(1, dim // 64),
            mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
            num_classes=state["head.weight"].shape[0],
        )
        model = cls(config)
        model.load_state_dict(state)
        return model.eval()
