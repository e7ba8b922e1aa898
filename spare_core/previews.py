"""Before/after previews: base and adapted generations on the same seeds, at a LoRA strength."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from PIL import Image

from .adapter import SparseLoRA
from .backend import DiffusionBackend
from .events import CancelToken, EventCallback, Monitor
from .images import grid_image, to_pil
from .lora import Lora
from .sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS


def generate_images(
    backend: DiffusionBackend,
    prompts: Sequence[str],
    seeds: Sequence[int],
    lora: Lora | SparseLoRA | None = None,
    strength: float = 1.0,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    *,
    on_event: EventCallback | None = None,
    cancel: CancelToken | None = None,
) -> torch.Tensor:
    """Every prompt on every seed (prompt-major), ``[len(prompts) * len(seeds), 3, H, W]`` in [-1, 1].

    With a LoRA it is applied at ``strength`` for these generations only; the
    model is unchanged afterwards. Reports ``preview`` events per prompt.
    """
    if not prompts or not all(p.strip() for p in prompts):
        raise ValueError("give at least one non-empty prompt")
    if not seeds:
        raise ValueError("give at least one seed")
    monitor = Monitor(on_event, cancel)
    adapter = lora.adapter(backend) if isinstance(lora, Lora) else lora
    images = []
    for i, prompt in enumerate(prompts):
        monitor.check()
        applied = adapter.applied(strength) if adapter is not None and strength != 0 else nullcontext()
        with applied:
            images.append(backend.sample([prompt] * len(seeds), list(seeds), steps, guidance, on_step=monitor.check))
        monitor.emit("preview", i + 1, len(prompts), message=prompt)
    return torch.cat(images)


@dataclass
class Preview:
    """Generations of ``prompts`` x ``seeds`` without (``before``) and with (``after``) the LoRA."""

    prompts: list[str]
    seeds: list[int]
    strength: float
    before: torch.Tensor
    after: torch.Tensor

    def images(self, side: str = "after") -> list[Image.Image]:
        """The ``before`` or ``after`` generations as PIL images, prompt-major (for galleries)."""
        if side not in ("before", "after"):
            raise ValueError(f"side must be 'before' or 'after', got {side!r}")
        return [to_pil(image) for image in getattr(self, side)]

    def grid(self) -> Image.Image:
        """One row per prompt before, then after; one column per seed."""
        n = len(self.seeds)
        rows, labels = [], []
        for i, prompt in enumerate(self.prompts):
            rows += [self.before[i * n : (i + 1) * n], self.after[i * n : (i + 1) * n]]
            labels += [f"{prompt} | before", f"after ({self.strength:g})"]
        return grid_image(torch.cat(rows), labels, [f"seed {s}" for s in self.seeds])


def preview(
    backend: DiffusionBackend,
    prompts: Sequence[str],
    seeds: Sequence[int],
    lora: Lora | SparseLoRA,
    strength: float = 1.0,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    *,
    on_event: EventCallback | None = None,
    cancel: CancelToken | None = None,
) -> Preview:
    """Base and adapted generations on the same seeds (at strength 0 the two are equal)."""
    kw = dict(steps=steps, guidance=guidance, on_event=on_event, cancel=cancel)
    before = generate_images(backend, prompts, seeds, None, **kw)
    after = generate_images(backend, prompts, seeds, lora, strength, **kw)
    return Preview(list(prompts), list(seeds), float(strength), before, after)
