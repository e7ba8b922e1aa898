"""Timestep targeting: where in the denoising trajectory is the concept decided?

The profile ``d(t) = E || eps(x_t, c_f, t) - eps(x_t, c_s, t) ||^2`` measures how
much the model's prediction changes when the concept prompt ``c_f`` is swapped
for the surrogate ``c_s`` . Optionally it is divided by
how much two *other* concepts of the same domain differ at the same t, so that
the profile shows what is specific to this concept rather than where prompts
matter in general. Training then samples ``p(t) ~ d(t)^gamma`` mixed with a
uniform floor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .backend import DiffusionBackend
from .fileio import write_text

logger = logging.getLogger(__name__)


@dataclass
class TimestepProfile:
    """A measured concept/surrogate divergence over a grid of timesteps, and the sampler it defines."""

    grid: list[int]  # timesteps where d(t) was measured, ascending
    divergence: list[float]  # raw d(t) on the grid (or its ratio to the contrast)
    smoothed: list[float]  # d(t) after smoothing, on the grid
    num_train_timesteps: int
    gamma: float = 1.0
    floor: float = 0.1  # share of the uniform distribution in p(t)
    contrast: list[float] | None = None  # d_other(t) on the grid, when measured
    concept: str = ""
    surrogate: str = ""

    def probabilities(self) -> torch.Tensor:
        """p(t) over every training timestep: ``(1 - floor) * d(t)^gamma / Z + floor / T``."""
        if not 0 <= self.floor <= 1:
            raise ValueError(f"floor must lie in [0, 1], got {self.floor}")
        t_all = torch.arange(self.num_train_timesteps, dtype=torch.float64)
        d = _interpolate(
            torch.tensor(self.grid, dtype=torch.float64), torch.tensor(self.smoothed, dtype=torch.float64), t_all
        )
        weights = d.clamp_min(0) ** self.gamma
        total = float(weights.sum())
        uniform = torch.full_like(weights, 1.0 / self.num_train_timesteps)
        if total <= 0:
            return uniform
        return (1 - self.floor) * weights / total + self.floor * uniform

    def peak(self) -> int:
        """The grid timestep where the smoothed divergence is largest."""
        return self.grid[max(range(len(self.grid)), key=lambda i: self.smoothed[i])]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TimestepProfile:
        data = json.loads(text)
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"not a SPARE timestep profile: {exc}") from exc

    def save(self, path: str | Path) -> None:
        write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> TimestepProfile:
        return cls.from_json(Path(path).read_text())


class TimestepSampler:
    """Draws training timesteps from a distribution over ``0..T-1``."""

    def __init__(self, probabilities: torch.Tensor):
        if probabilities.dim() != 1 or probabilities.numel() == 0:
            raise ValueError("timestep probabilities must be a non-empty 1-D tensor")
        self.probabilities = (probabilities / probabilities.sum()).float()

    @classmethod
    def uniform(cls, num_train_timesteps: int) -> TimestepSampler:
        return cls(torch.full((num_train_timesteps,), 1.0 / num_train_timesteps))

    @classmethod
    def from_profile(cls, profile: TimestepProfile) -> TimestepSampler:
        return cls(profile.probabilities())

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.multinomial(self.probabilities, n, replacement=True, generator=generator)


def _interpolate(x: torch.Tensor, y: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of (x, y) at ``at``, constant beyond the ends."""
    idx = torch.searchsorted(x, at).clamp(1, len(x) - 1)
    x0, x1, y0, y1 = x[idx - 1], x[idx], y[idx - 1], y[idx]
    w = ((at - x0) / (x1 - x0)).clamp(0, 1)
    return y0 + w * (y1 - y0)


def smooth(values: Sequence[float], width: int = 3) -> list[float]:
    """Centred moving average over ``width`` grid points (shrinking at the ends)."""
    if width <= 1:
        return list(values)
    half = width // 2
    out = []
    for i in range(len(values)):
        window = values[max(0, i - half) : i + half + 1]
        out.append(sum(window) / len(window))
    return out


def default_grid(num_train_timesteps: int, points: int = 20) -> list[int]:
    """``points`` timesteps spread evenly over ``0..T-1``."""
    step = num_train_timesteps / points
    return [int(step * i + step / 2) for i in range(points)]


@torch.no_grad()
def prompt_divergence(
    backend: DiffusionBackend,
    latents: torch.Tensor,
    prompt_a: str,
    prompt_b: str,
    grid: Sequence[int],
    seed: int = 0,
    on_point: Callable[[], None] | None = None,
) -> list[float]:
    """``E || eps(x_t, a, t) - eps(x_t, b, t) ||^2`` (mean over elements) at each grid timestep.

    The same noise is used for both prompts and for every call with the same
    seed, so differences between calls are differences of prompts.
    ``on_point`` runs after every grid timestep (progress and cancel checks).
    """
    cond = backend.encode_prompts([prompt_a, prompt_b])
    n = latents.shape[0]
    cond_a, cond_b = cond.select(slice(0, 1)).repeat(n), cond.select(slice(1, 2)).repeat(n)
    latents = latents.to(backend.device, backend.dtype)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in grid:
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        tt = torch.full((n,), int(t), dtype=torch.long, device=backend.device)
        x_t = backend.add_noise(latents, noise, tt)
        diff = backend.predict_noise(x_t, tt, cond_a) - backend.predict_noise(x_t, tt, cond_b)
        out.append(float(diff.float().pow(2).mean()))
        if on_point is not None:
            on_point()
    return out


def compute_profile(
    backend: DiffusionBackend,
    latents: torch.Tensor,
    concept_prompt: str,
    surrogate_prompt: str,
    contrast_prompts: tuple[str, str] | None = None,
    grid: Sequence[int] | None = None,
    smoothing: int = 3,
    gamma: float = 1.0,
    floor: float = 0.1,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> TimestepProfile:
    """Measure the timestep profile of erasing ``concept_prompt`` toward ``surrogate_prompt``.

    ``latents`` are forget samples (images of the concept, encoded). With
    ``contrast_prompts`` (two other concepts of the same domain) the profile
    is the ratio of the concept/surrogate divergence to their divergence.
    ``progress(done, total)`` runs after every measured grid timestep.
    """
    if concept_prompt.strip() == surrogate_prompt.strip():
        raise ValueError("the concept prompt and the surrogate prompt are the same; nothing to erase")
    grid = sorted(int(t) for t in (grid or default_grid(backend.num_train_timesteps)))
    if grid[0] < 0 or grid[-1] >= backend.num_train_timesteps:
        raise ValueError(f"timestep grid must lie in 0..{backend.num_train_timesteps - 1}")
    total = len(grid) * (2 if contrast_prompts else 1)
    done = [0]

    def on_point() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    divergence = prompt_divergence(backend, latents, concept_prompt, surrogate_prompt, grid, seed, on_point)
    contrast = None
    if contrast_prompts is not None:
        contrast = prompt_divergence(backend, latents, *contrast_prompts, grid, seed, on_point)
        eps = 1e-3 * max(contrast) + 1e-12
        divergence = [d / (c + eps) for d, c in zip(divergence, contrast, strict=True)]
    return TimestepProfile(
        grid=list(grid),
        divergence=divergence,
        smoothed=smooth(divergence, smoothing),
        num_train_timesteps=backend.num_train_timesteps,
        gamma=gamma,
        floor=floor,
        contrast=contrast,
        concept=concept_prompt,
        surrogate=surrogate_prompt,
    )


def plot_profile(profile: TimestepProfile, path: str | Path) -> None:
    """Save the profile (raw and smoothed d(t), and the sampling density p(t)) as a PNG."""
    from .plotting import save_figure, subplots

    fig, ax = subplots()
    ax.plot(profile.grid, profile.divergence, "o", color="#999999", label="measured d(t)")
    ax.plot(profile.grid, profile.smoothed, "-", color="#1f77b4", label="smoothed d(t)")
    ax.set_xlabel("timestep t (0 = clean image)")
    ax.set_ylabel("ratio to contrast" if profile.contrast else "divergence")
    p = profile.probabilities().numpy()
    ax2 = ax.twinx()
    ax2.plot(range(len(p)), p, color="#d62728", alpha=0.7, label="sampling p(t)")
    ax2.set_ylabel("p(t)")
    ax.set_title(f"Timestep profile: {profile.concept!r} -> {profile.surrogate!r}")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    save_figure(fig, path)
