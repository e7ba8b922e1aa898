"""Object and style classifiers for the toy world: they judge generations.

Small CNNs trained on freshly rendered images, half of them degraded the way
generations look (blur, noise), so that they stay reliable on model outputs.
Besides the object and the style classifier there is a second style classifier
that sees only greyscale: it must recognise textures by their pattern, so it
checks that the model draws them, not only their colours.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .world import OBJECTS, STYLES, degrade, render

logger = logging.getLogger(__name__)


#: The shipped classifiers' files, in the order ``train_classifiers`` returns them.
CLASSIFIER_FILES = (
    "object_classifier.safetensors",
    "style_classifier.safetensors",
    "grey_style_classifier.safetensors",
)

#: Luminance weights of ITU-R BT.601, the usual RGB -> greyscale conversion.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_greyscale(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] RGB -> [N, 1, H, W] luminance (same value range)."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


class ToyClassifier(nn.Module):
    """A three-stage CNN over 32 x 32 images in [-1, 1]; with ``greyscale`` it sees luminance only."""

    def __init__(self, num_classes: int, width: int = 32, greyscale: bool = False):
        super().__init__()
        self.greyscale = greyscale
        layers: list[nn.Module] = []
        channels = 1 if greyscale else 3
        for mult in (1, 2, 4):
            out = width * mult
            layers += [
                nn.Conv2d(channels, out, 3, padding=1),
                nn.GroupNorm(8, out),
                nn.SiLU(),
                nn.Conv2d(out, out, 3, padding=1),
                nn.GroupNorm(8, out),
                nn.SiLU(),
                nn.MaxPool2d(2),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.greyscale:
            images = to_greyscale(images)
        return self.head(self.features(images).mean(dim=(2, 3)))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The pooled features the head reads, ``[N, channels]`` (a feature distance between images)."""
        was_training = self.training
        self.eval()
        out = []
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size].float()
            out.append(self.features(to_greyscale(chunk) if self.greyscale else chunk).mean(dim=(2, 3)))
        self.train(was_training)
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class index per image."""
        was_training = self.training
        self.eval()
        preds = [self(images[i : i + batch_size].float()).argmax(-1) for i in range(0, len(images), batch_size)]
        self.train(was_training)
        return torch.cat(preds)


def _training_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    obj = torch.randint(len(OBJECTS), (n,), generator=gen)
    sty = torch.randint(len(STYLES), (n,), generator=gen)
    images = render(obj, sty, gen)
    # Half the batch is degraded with a random blur and noise level.
    half = n // 2
    sigma = float(torch.rand(1, generator=gen)) * 1.6
    noise = float(torch.rand(1, generator=gen)) * 0.15
    images[:half] = degrade(images[:half], gen, blur_sigma=sigma, noise_std=noise)
    return images.clamp(-1.5, 1.5), obj, sty


def train_classifiers(
    steps: int,
    seed: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[ToyClassifier, ToyClassifier, ToyClassifier]:
    """Train the object, the style and the greyscale style classifier side by side on the same batches."""
    torch.manual_seed(seed)
    object_clf = ToyClassifier(len(OBJECTS))
    style_clf = ToyClassifier(len(STYLES))
    grey_style_clf = ToyClassifier(len(STYLES), greyscale=True)
    models = (object_clf, style_clf, grey_style_clf)
    params = [p for m in models for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        images, obj, sty = _training_batch(batch_size, gen)
        loss = (
            F.cross_entropy(object_clf(images), obj)
            + F.cross_entropy(style_clf(images), sty)
            + F.cross_entropy(grey_style_clf(images), sty)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step, loss.item())
    return object_clf.eval(), style_clf.eval(), grey_style_clf.eval()
