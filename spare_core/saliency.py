"""Saliency: which modules (and which output channels) carry the concept?

Saliency of a weight element is the accumulated absolute gradient
``S = sum over batches |dL/dW|`` (SPARE's published code). What ``L`` is
decides what saliency measures:

* ``denoise``: the plain denoising loss on forget samples, as the paper's code
  does. Measured on the toy model it ranks the same modules first for any
  concept (general sensitivity: ``conv_in``, shortcuts, ``conv_out``).
* ``forget``: the erasure objective at the start of training,
  ``|| eps(x_t, c_f) - sg eps(x_t, c_s) ||^2``: the weights through which the
  concept prompt changes the prediction.
* ``forget_over_retain``: ``forget`` saliency divided, per module and per
  channel, by the denoising saliency on retain samples: what matters for the
  concept relative to what matters for everything else.

Module score: the mean of ``S`` over the module's weight. Channel score: the
mean over each output row, which gives a structured (row) mask that still
exports exactly as a plain LoRA.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .adapter import normal_weights
from .backend import Conditioning, DiffusionBackend, adaptable_modules
from .config import MODULE_SCOPES, SALIENCY_MODES
from .fileio import write_text
from .timesteps import TimestepSampler

logger = logging.getLogger(__name__)


@dataclass
class Saliency:
    """Saliency scores of every candidate module and its output channels."""

    mode: str
    module_scores: dict[str, float]
    channel_scores: dict[str, list[float]] = field(default_factory=dict)
    concept: str = ""
    #: The modules chosen to carry the adapter (empty until a selection is made).
    selected: list[str] = field(default_factory=list)
    #: The settings the selection was made with (checked when a saved saliency is reused).
    settings: dict = field(default_factory=dict)

    def ranked(self) -> list[str]:
        """Module names, most salient first (ties broken by name, so the order is stable)."""
        return sorted(self.module_scores, key=lambda n: (-self.module_scores[n], n))

    def select_modules(self, fraction: float | None = None, top_k: int | None = None) -> list[str]:
        """The most salient modules: the top ``top_k`` (0 or None: off), or the top ``fraction`` (at least one)."""
        ranked = self.ranked()
        if not top_k:
            if fraction is None or not 0 < fraction <= 1:
                raise ValueError(f"module fraction must lie in (0, 1], got {fraction}")
            top_k = max(1, round(fraction * len(ranked)))
        return ranked[:top_k]

    def row_masks(self, modules: Sequence[str], fraction: float) -> dict[str, torch.Tensor]:
        """Per module, a 0/1 mask over output rows keeping its top ``fraction`` of channels."""
        if not 0 < fraction <= 1:
            raise ValueError(f"channel fraction must lie in (0, 1], got {fraction}")
        masks = {}
        for name in modules:
            scores = torch.tensor(self.channel_scores[name])
            keep = max(1, round(fraction * scores.numel()))
            mask = torch.zeros_like(scores)
            mask[torch.topk(scores, keep).indices] = 1.0
            masks[name] = mask
        return masks

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def save(self, path: str | Path) -> None:
        write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Saliency:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a SPARE saliency file: {exc}") from exc


def candidate_modules(denoiser: torch.nn.Module, scope: str = "all") -> list[str]:
    """Module names that may carry an adapter.

    ``all``: every Linear and Conv2d; ``attention``: the attention projections
    (q, k, v, out of self- and cross-attention); ``cross_attention``: the
    cross-attention projections only; ``text``: the cross-attention keys and
    values, the only modules that read the prompt.
    """
    names = list(adaptable_modules(denoiser))
    if scope == "all":
        return names
    if scope == "attention":
        pattern = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
    elif scope == "cross_attention":
        pattern = re.compile(r"\.attn2\.(to_q|to_k|to_v|to_out\.0)$")
    elif scope == "text":
        pattern = re.compile(r"\.attn2\.(to_k|to_v)$")
    else:
        raise ValueError(f"unknown module scope {scope!r}; use {', '.join(MODULE_SCOPES)}")
    return [n for n in names if pattern.search(n)]


def _accumulate(
    backend: DiffusionBackend,
    weights: dict[str, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    batches: int,
    batch_size: int,
    sampler: TimestepSampler,
    seed: int,
    on_batch: Callable[[], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Sum of |dL/dW| over ``batches`` random batches, for every weight in ``weights``.

    ``loss_fn(x_t, t, noise, index)`` gets the noised latents and which samples they are.
    """
    totals = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    gen = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        index = torch.randint(len(latents), (batch_size,), generator=gen)
        x0 = latents[index].to(backend.device, backend.dtype)
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        t = sampler.sample(batch_size, gen).to(backend.device)
        x_t = backend.add_noise(x0, noise, t)
        loss = loss_fn(x_t, t, noise, index)
        grads = torch.autograd.grad(loss, list(weights.values()))
        for name, g in zip(weights, grads, strict=True):
            totals[name] += g.detach().abs().float()
        if on_batch is not None:
            on_batch()
    return totals


def compute_saliency(
    backend: DiffusionBackend,
    forget_latents: torch.Tensor,
    forget_prompt_index: torch.Tensor,
    concept_prompts: Sequence[str],
    surrogate_prompts: Sequence[str],
    mode: str = "forget_over_retain",
    retain_latents: torch.Tensor | None = None,
    retain_prompt_index: torch.Tensor | None = None,
    retain_prompts: Sequence[str] | None = None,
    scope: str = "all",
    batches: int = 4,
    batch_size: int = 8,
    sampler: TimestepSampler | None = None,
    seed: int = 0,
    concept: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> Saliency:
    """Saliency of every candidate module of ``backend``'s denoiser for erasing a concept.

    ``forget_latents[i]`` was generated from ``concept_prompts[forget_prompt_index[i]]``;
    ``surrogate_prompts`` are the same prompts with the concept swapped for the
    surrogate. Retain latents and prompts are needed by ``forget_over_retain``.
    ``progress(done, total)`` runs after every gradient batch.
    """
    if mode not in SALIENCY_MODES:
        raise ValueError(f"unknown saliency mode {mode!r}; use one of {', '.join(SALIENCY_MODES)}")
    if len(concept_prompts) != len(surrogate_prompts):
        raise ValueError("every concept prompt needs its surrogate prompt")
    if mode == "forget_over_retain" and (retain_latents is None or retain_prompts is None):
        raise ValueError("forget_over_retain saliency needs retain samples and prompts")
    denoiser = backend.denoiser()
    names = candidate_modules(denoiser, scope)
    modules = dict(denoiser.named_modules())
    sampler = sampler or TimestepSampler.uniform(backend.num_train_timesteps)
    total = batches * (2 if mode == "forget_over_retain" else 1)
    done = [0]

    def on_batch() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    concept_cond = backend.encode_prompts(concept_prompts).detached_clone()
    surrogate_cond = backend.encode_prompts(surrogate_prompts).detached_clone()

    def denoise_loss(cond: Conditioning, prompt_index: torch.Tensor):
        def loss(x_t, t, noise, index):
            pred = backend.predict_noise(x_t, t, cond.select(prompt_index[index]))
            return (pred.float() - noise.float()).pow(2).mean()

        return loss

    def forget_loss(x_t, t, noise, index):
        with torch.no_grad():
            target = backend.predict_noise(x_t, t, surrogate_cond.select(forget_prompt_index[index]))
        pred = backend.predict_noise(x_t, t, concept_cond.select(forget_prompt_index[index]))
        return (pred.float() - target.float()).pow(2).mean()

    with torch.inference_mode(False), normal_weights(denoiser):
        weights = {n: modules[n].weight for n in names}
        previous = {n: w.requires_grad for n, w in weights.items()}
        for w in weights.values():
            w.requires_grad_(True)
        try:
            if mode == "denoise":
                s = _accumulate(
                    backend,
                    weights,
                    denoise_loss(concept_cond, forget_prompt_index),
                    forget_latents,
                    batches,
                    batch_size,
                    sampler,
                    seed,
                    on_batch,
                )
            else:
                s = _accumulate(
                    backend, weights, forget_loss, forget_latents, batches, batch_size, sampler, seed, on_batch
                )
            retain = None
            if mode == "forget_over_retain":
                retain_cond = backend.encode_prompts(retain_prompts).detached_clone()
                retain = _accumulate(
                    backend,
                    weights,
                    denoise_loss(retain_cond, retain_prompt_index),
                    retain_latents,
                    batches,
                    batch_size,
                    sampler,
                    seed + 1,
                    on_batch,
                )
        finally:
            for n, w in weights.items():
                w.requires_grad_(previous[n])
                w.grad = None

    module_scores, channel_scores = {}, {}
    for n in names:
        rows = s[n].flatten(1).mean(1)
        if retain is not None:
            retain_rows = retain[n].flatten(1).mean(1)
            module_scores[n] = float(s[n].mean() / (retain[n].mean() + 1e-12))
            rows = rows / (retain_rows + 1e-6 * retain_rows.mean() + 1e-12)
        else:
            module_scores[n] = float(s[n].mean())
        channel_scores[n] = rows.tolist()
    return Saliency(mode=mode, module_scores=module_scores, channel_scores=channel_scores, concept=concept)


def block_of(module_name: str) -> str:
    """The UNet block a module belongs to (``down_blocks.1``, ``mid_block``, ``input_blocks.4``, ``conv_in``...)."""
    parts = module_name.split(".")
    if parts[0] in ("down_blocks", "up_blocks", "input_blocks", "output_blocks") and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def plot_saliency(saliency: Saliency, path: str | Path, selected: Sequence[str] | None = None) -> None:
    """Bar chart of module saliency grouped by UNet block; selected modules in colour."""
    from .plotting import save_figure, subplots

    names = list(saliency.module_scores)  # model order
    selected_set = set(selected or [])
    fig, ax = subplots(width=10, height=3.8)
    colours = ["#d62728" if n in selected_set else "#9e9e9e" for n in names]
    ax.bar(range(len(names)), [saliency.module_scores[n] for n in names], color=colours, width=0.9)
    ticks, labels, last = [], [], None
    for i, n in enumerate(names):
        block = block_of(n)
        if block != last:
            ticks.append(i)
            labels.append(block)
            ax.axvline(i - 0.5, color="#dddddd", linewidth=0.8)
            last = block
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=45, ha="left", fontsize=7)
    ax.set_ylabel(f"saliency ({saliency.mode})")
    ax.set_title(
        f"Saliency by UNet block{': ' + saliency.concept if saliency.concept else ''} "
        f"(red: {len(selected_set)} selected)"
    )
    save_figure(fig, path)
