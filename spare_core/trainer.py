"""Self-distillation training of a sparse LoRA (the ``train`` stage).

Teacher: the same model with the adapter detached. Per step:

* forget: ``MSE(eps_{theta+D}(x_t, c_f), sg[eps(x_t, c_s) - eta (eps(x_t, c_f) - eps(x_t, c_s))])``
  on forget latents, ``t`` from the timestep sampler (eta 0: the paper's pure
  self-distillation; eta 1: ESD's target with the surrogate as reference);
  optional images of the surrogate prompts join the forget latents, with eta 0;
* retain: ``MSE(eps_{theta+D}(x_t, c), sg[eps(x_t, c)])`` on retain latents, ``t``
  from the forget term's sampler (``retain_timesteps`` ``forget``, the default) or uniform;
* preserve (``preserve_weight > 0``): the adapter's relative change to what the
  prompt-reading modules compute from the retain and surrogate prompts' token
  states (:mod:`spare_core.preservation`; no model pass);
* ``loss = w_f * forget + w_r * retain + w_p * preserve``; AdamW, cosine schedule, gradient clipping;
* robust mode (``robust > 0``): the forget term is the mean of the term above
  and the same term with ``c_f`` replaced by adversarial text states
  ``c_f + delta`` that bring the concept back (:meth:`SelfDistillationTrainer._adversarial_conditioning`).

Every random draw of step ``k`` comes from a generator seeded by (seed, k), so
a run resumed from a checkpoint ends with the same adapter as an
uninterrupted one.

The published baselines (:mod:`spare_core.baselines`) run on this same loop:
their edit (a LoRA or a :class:`~spare_core.weight_delta.WeightDelta`) takes
the adapter's place, their anchor prompts the surrogate's, and ESD's
``x_t`` drawn by the edited model itself come from a ``forget_source``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .adapter import SparseLoRA, normal_weights
from .backend import Conditioning, DiffusionBackend
from .checkpoint import load_optimizer_tensors, optimizer_tensors
from .config import ErasureConfig
from .events import ErasureCancelled, Monitor
from .fileio import save_safetensors
from .preservation import TextStatePreservation
from .timesteps import TimestepSampler

logger = logging.getLogger(__name__)


__all__ = ["ErasureCancelled", "SelfDistillationTrainer", "TrainingData", "TrainingDiverged", "TrainingHistory"]


class TrainingDiverged(ValueError):
    """The loss stopped being a finite number; nothing was written."""


@dataclass
class TrainingData:
    """Latents of the forget and retain sets with the prompt each came from."""

    forget_latents: torch.Tensor
    forget_prompt_index: torch.Tensor  # into concept/surrogate conditioning
    concept_cond: Conditioning
    surrogate_cond: Conditioning
    retain_latents: torch.Tensor
    retain_prompt_index: torch.Tensor
    retain_cond: Conditioning
    # Optional images of the surrogate prompts (index into the same conditioning
    # as the forget latents); they join the forget pool in training only.
    surrogate_latents: torch.Tensor | None = None
    surrogate_prompt_index: torch.Tensor | None = None

    def forget_pool(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents the forget term trains on, with their prompt indices."""
        if self.surrogate_latents is None:
            return self.forget_latents, self.forget_prompt_index
        return (
            torch.cat([self.forget_latents, self.surrogate_latents]),
            torch.cat([self.forget_prompt_index, self.surrogate_prompt_index]),
        )


@dataclass
class StepReport:
    step: int
    total: int
    loss: float
    forget_loss: float
    retain_loss: float


@dataclass
class TrainingHistory:
    losses: list[float] = field(default_factory=list)
    forget_losses: list[float] = field(default_factory=list)
    retain_losses: list[float] = field(default_factory=list)


def forget_target(
    eps_surrogate: torch.Tensor, eps_concept: torch.Tensor, eta: float, on_surrogate_image: torch.Tensor
) -> torch.Tensor:
    """``eps_s - eta (eps_f - eps_s)`` per sample; on images of the surrogate, ``eps_s`` alone.

    Surrogate images lie where the erased model's own sampling goes; there the
    student should simply agree with the surrogate, not be pushed further away
    from the concept (which made an erased object drift to a third object).
    """
    shape = (-1,) + (1,) * (eps_surrogate.dim() - 1)
    eta_per_sample = torch.where(on_surrogate_image, 0.0, eta).to(eps_surrogate).view(shape)
    return eps_surrogate - eta_per_sample * (eps_concept - eps_surrogate)


#: Temperature of the retain focus's softmax over cosine similarities (see ``retain_sampling_weights``).
RETAIN_FOCUS_TEMPERATURE = 0.1
#: Robust mode: signed-gradient steps that find the adversarial text states of a step, and each one's size
#: as a share of the radius (two steps of 0.75 can reach the radius's corners).
ADVERSARIAL_STEPS = 2
ADVERSARIAL_STEP_SHARE = 0.75


def cosine_lr(step: int, total: int, base: float, warmup: int = 10) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


#: Draws the forget batch of one step: ``(generator, batch size) -> (prompt-pool index, x_t, t)``.
ForgetSource = Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
#: Called during training with the step reached and the adapter (see ``SelfDistillationTrainer.run``).
Probe = Callable[[int, "SparseLoRA"], None]
#: Learning rate of a step: ``(step, total steps, base rate) -> rate``.
LearningRateSchedule = Callable[[int, int, float], float]


def constant_lr(step: int, total: int, base: float) -> float:
    """The base rate at every step (ESD's and LECO's published schedules)."""
    return base


def retain_sampling_weights(
    data: TrainingData, focus: float, temperature: float = RETAIN_FOCUS_TEMPERATURE, *, surrogate: bool = False
) -> torch.Tensor:
    """How often each retain latent is drawn: a mix of uniform and "hard" retain prompts.

    The retain prompts whose text states lie closest to the forget prompts'
    (cosine similarity of their token-averaged states, centred on the retain
    prompts' mean) are the ones an erasure most easily drags along: the
    concept's neighbours. With ``surrogate``, a prompt's similarity is the
    larger of its similarity to the forget prompts and to the surrogate
    prompts, so the surrogate's own prompts are held too (erasing ``cross``
    toward ``ring`` otherwise turns some ``ring`` prompts into something
    else). ``focus`` of the draws follow a softmax of that similarity at
    ``temperature``; the rest are uniform.
    """
    retain = data.retain_cond.hidden_states.float().mean(dim=1)
    centre = retain.mean(dim=0, keepdim=True)

    def similarity_to(cond: Conditioning) -> torch.Tensor:
        mean_state = cond.hidden_states.float().mean(dim=1).mean(dim=0, keepdim=True)
        return torch.cosine_similarity(retain - centre, mean_state - centre, dim=1)

    similarity = similarity_to(data.concept_cond)
    if surrogate:
        similarity = torch.maximum(similarity, similarity_to(data.surrogate_cond))
    per_prompt = (1 - focus) / len(retain) + focus * torch.softmax(similarity / temperature, dim=0)
    per_latent = per_prompt[data.retain_prompt_index]
    counts = torch.bincount(data.retain_prompt_index, minlength=len(retain)).float()
    return per_latent / counts[data.retain_prompt_index]  # a prompt's share, split over its latents


def preserved_states(data: TrainingData) -> torch.Tensor:
    """The token states the preservation term keeps: every retain prompt's and every surrogate prompt's."""
    states = [data.retain_cond.hidden_states, data.surrogate_cond.hidden_states]
    return torch.cat([s.reshape(-1, s.shape[-1]).float() for s in states])


class SelfDistillationTrainer:
    """Trains ``adapter`` on ``backend`` with the SPARE objective.

    ``adapter`` is anything with ``applied()``, ``detach()``,
    ``trainable_parameters()`` and a state dict (a :class:`SparseLoRA` or a
    :class:`~spare_core.weight_delta.WeightDelta`). ``forget_source`` replaces
    the forward-noised forget images as the source of the forget batch's
    ``x_t``; a ``retain_weight`` of 0 skips the retain term's predictions.
    """

    def __init__(
        self,
        backend: DiffusionBackend,
        adapter: SparseLoRA,
        data: TrainingData,
        sampler: TimestepSampler,
        config: ErasureConfig,
        *,
        forget_source: ForgetSource | None = None,
        lr_schedule: LearningRateSchedule | None = None,
    ):
        self.backend, self.adapter, self.data, self.sampler, self.config = backend, adapter, data, sampler, config
        self.forget_source = forget_source
        self.lr_schedule = lr_schedule or cosine_lr
        self.optimizer = torch.optim.AdamW(
            adapter.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.retain_sampler = (
            sampler if config.retain_timesteps == "forget" else TimestepSampler.uniform(backend.num_train_timesteps)
        )
        self.retain_odds = (
            retain_sampling_weights(data, config.retain_focus, surrogate=config.retain_focus_surrogate)
            if config.retain_focus > 0 and len(data.retain_latents)
            else None
        )  # fmt: skip
        self.forget_latents, self.forget_prompt_index = data.forget_pool()
        self.preservation = (
            TextStatePreservation(adapter, preserved_states(data)) if config.preserve_weight > 0 else None
        )
        self.concept_images = len(data.forget_latents)
        self.step = 0
        self.history = TrainingHistory()

    # ------------------------------------------------------------------ one step

    def _batch(
        self, latents: torch.Tensor, gen: torch.Generator, sampler: TimestepSampler, odds: torch.Tensor | None = None
    ):
        n = self.config.batch_size
        if odds is None:
            index = torch.randint(len(latents), (n,), generator=gen)
        else:
            index = torch.multinomial(odds, n, replacement=True, generator=gen)
        x0 = latents[index].to(self.backend.device, self.backend.dtype)
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        t = sampler.sample(n, gen).to(self.backend.device)
        return index, self.backend.add_noise(x0, noise, t), t

    def _predict(self, parts: list[tuple[torch.Tensor, torch.Tensor, Conditioning]]) -> list[torch.Tensor]:
        """Noise predictions for several (x_t, t, cond) batches through one UNet call.

        One large forward is cheaper than several small ones on a CPU.
        """
        x_t = torch.cat([x for x, _, _ in parts])
        t = torch.cat([t for _, t, _ in parts])
        cond = Conditioning.cat([c for _, _, c in parts])
        eps = self.backend.predict_noise(x_t, t, cond).float()
        return list(eps.split([len(x) for x, _, _ in parts]))

    def _adversarial_conditioning(
        self, x_t: torch.Tensor, t: torch.Tensor, concept: Conditioning, eps_concept: torch.Tensor
    ) -> Conditioning:
        """The concept prompts' text states, pushed toward bringing the concept back (robust mode).

        A few signed-gradient steps (projected gradient descent, as in
        adversarial training; Madry et al. 2018) on ``delta``, within
        ``robust`` times the states' RMS per element, to make the adapted
        model predict what the original model predicts for the concept:
        ``min_delta || eps_{theta+D}(x_t, c + delta) - eps(x_t, c) ||^2``.
        Only ``delta`` is differentiated; the adapter's gradients are untouched.
        Of the states the steps reach (the unperturbed ones included), the one
        that brings the concept back best is returned: a signed step can overshoot.
        """
        states = concept.hidden_states.detach().float()
        radius = self.config.robust * states.pow(2).mean().sqrt()
        step_size = ADVERSARIAL_STEP_SHARE * radius

        def attack_loss(delta: torch.Tensor) -> torch.Tensor:
            cond = Conditioning((states + delta).to(concept.hidden_states.dtype), concept.extra)
            return (self.backend.predict_noise(x_t, t, cond).float() - eps_concept).pow(2).mean()

        delta = torch.zeros_like(states)
        best, best_loss = delta, float("inf")
        with self.adapter.applied():
            for k in range(ADVERSARIAL_STEPS + 1):
                delta.requires_grad_(k < ADVERSARIAL_STEPS)
                with torch.set_grad_enabled(k < ADVERSARIAL_STEPS):
                    loss = attack_loss(delta)
                if loss.item() < best_loss:
                    best, best_loss = delta.detach(), loss.item()
                if k == ADVERSARIAL_STEPS:
                    break
                (grad,) = torch.autograd.grad(loss, delta)
                delta = (delta.detach() - step_size * grad.sign()).clamp(-radius, radius)
        return Conditioning((states + best).to(concept.hidden_states.dtype), concept.extra)

    def train_step(self) -> StepReport:
        cfg, data = self.config, self.data
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        if self.forget_source is not None:
            f_index, f_xt, f_t = self.forget_source(gen, cfg.batch_size)
            f_prompt = f_index
        else:
            f_index, f_xt, f_t = self._batch(self.forget_latents, gen, self.sampler)
            f_prompt = self.forget_prompt_index[f_index]
        with_retain = cfg.retain_weight > 0
        retain_part = []
        if with_retain:
            r_index, r_xt, r_t = self._batch(data.retain_latents, gen, self.retain_sampler, self.retain_odds)
            retain_part = [(r_xt, r_t, data.retain_cond.select(data.retain_prompt_index[r_index]))]
        concept = data.concept_cond.select(f_prompt)
        surrogate = data.surrogate_cond.select(f_prompt)

        self.adapter.detach()
        with torch.no_grad():
            if cfg.eta != 0 or cfg.robust > 0:
                on_surrogate_image = (f_index >= self.concept_images) & (self.forget_source is None)
                # The target ignores eps_f on surrogate images; robust mode's attack reads every row.
                rows = torch.arange(len(f_xt)) if cfg.robust > 0 else (~on_surrogate_image).nonzero().flatten()
                eps_s, eps_f_rows, *retain_target = self._predict(
                    [(f_xt, f_t, surrogate), (f_xt[rows], f_t[rows], concept.select(rows)), *retain_part]
                )
                eps_f = eps_s.clone()
                eps_f[rows] = eps_f_rows
                target = forget_target(eps_s, eps_f, cfg.eta, on_surrogate_image=on_surrogate_image)
            else:
                target, *retain_target = self._predict([(f_xt, f_t, surrogate), *retain_part])
        forget_parts = [(f_xt, f_t, concept)]
        if cfg.robust > 0:
            forget_parts.append((f_xt, f_t, self._adversarial_conditioning(f_xt, f_t, concept, eps_f)))
        with self.adapter.applied():
            predictions = self._predict([*forget_parts, *retain_part])
            student_forget, student_retain = predictions[: len(forget_parts)], predictions[len(forget_parts) :]
            forget_loss = sum((s - target).pow(2).mean() for s in student_forget) / len(student_forget)
            retain_loss = (student_retain[0] - retain_target[0]).pow(2).mean() if with_retain else torch.zeros(())
            loss = cfg.forget_weight * forget_loss + cfg.retain_weight * retain_loss
            if self.preservation is not None:
                loss = loss + cfg.preserve_weight * self.preservation.loss()
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_schedule(self.step, cfg.steps, cfg.lr)
            self.optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"training diverged at step {self.step + 1} (loss {loss.item()}); "
                    f"lower the learning rate (lr is {cfg.lr:g}); nothing was written"
                )
            loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.adapter.trainable_parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        values = (loss.item(), forget_loss.item(), retain_loss.item())
        self.history.losses.append(values[0])
        self.history.forget_losses.append(values[1])
        self.history.retain_losses.append(values[2])
        return StepReport(self.step, cfg.steps, *values)

    # ------------------------------------------------------------------ the loop

    def run(
        self,
        monitor: Monitor | None = None,
        checkpoint_path: str | Path | None = None,
        checkpoint_every: int = 50,
        probe: Probe | None = None,
        probe_every: int = 10,
    ) -> TrainingHistory:
        """Train to ``config.steps``, resuming from ``checkpoint_path`` if it holds a checkpoint.

        Every step checks ``monitor``'s cancel token first and reports a ``train``
        event after. A checkpoint is written every ``checkpoint_every`` steps and
        when the run is cancelled, so that it resumes where it stopped.
        ``probe(step, adapter)`` runs every ``probe_every`` steps and after the
        last (the benchmark measures UA along training there, off its clock).
        """
        monitor = monitor or Monitor()
        denoiser = self.backend.denoiser()
        with torch.inference_mode(False), normal_weights(denoiser):
            if checkpoint_path is not None and Path(checkpoint_path).exists():
                self.load_checkpoint(checkpoint_path)
                logger.info("resuming erasure training at step %d from %s", self.step, checkpoint_path)
            while self.step < self.config.steps:
                try:
                    monitor.check()
                except BaseException:  # cancelled between steps: keep the state reached, so the run resumes here
                    if checkpoint_path is not None and self.step > 0:
                        self.save_checkpoint(checkpoint_path)
                    raise
                report = self.train_step()
                monitor.emit("train", report.step, report.total, loss=report.loss)
                if probe is not None and (self.step % probe_every == 0 or self.step == self.config.steps):
                    probe(self.step, self.adapter)
                if checkpoint_path is not None and (
                    self.step % checkpoint_every == 0 and self.step < self.config.steps
                ):
                    self.save_checkpoint(checkpoint_path)
        return self.history

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, path: str | Path) -> None:
        tensors = {f"adapter.{k}": v for k, v in self.adapter.state_dict().items()}
        tensors.update(optimizer_tensors(self.optimizer))
        tensors["step"] = torch.tensor(self.step)
        for name in ("losses", "forget_losses", "retain_losses"):
            tensors[f"history.{name}"] = torch.tensor(getattr(self.history, name), dtype=torch.float64)
        save_safetensors(tensors, path, metadata={"spare_config": self.config.to_json()})

    def load_checkpoint(self, path: str | Path) -> None:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get("spare_config")
        if stored != self.config.to_json():
            raise ValueError(
                f"checkpoint {path} was written for another configuration; delete it or choose another checkpoint path"
            )
        tensors = load_file(path)
        self.adapter.load_state_dict({k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")})
        load_optimizer_tensors(self.optimizer, tensors)
        self.step = int(tensors["step"])
        for name in ("losses", "forget_losses", "retain_losses"):
            setattr(self.history, name, tensors[f"history.{name}"].tolist())
