"""ESD's objective and its ``x_t`` drawn by the model being edited (Gandikota et al. 2023, "Erasing
Concepts from Diffusion Models", ICCV; the LECO objective is the same target trained as a LoRA).

ESD fine-tunes the model so that its prediction for the concept ``c`` follows
negative guidance away from it, relative to an anchor ``a`` (the empty prompt
in the paper; the surrogate in the anchor-concept variant, the idea of
Kumari et al. 2023, "Ablating Concepts in Text-to-Image Diffusion Models"):

    L = || eps_theta(x_t, t, c) - sg[ eps*(x_t, t, a) - eta (eps*(x_t, t, c) - eps*(x_t, t, a)) ] ||^2

with ``eps*`` the frozen original model and ``eta`` the negative guidance
(1 in the paper). This is SPARE's forget target with the anchor in the
surrogate's place (:func:`spare_core.trainer.forget_target`), so ESD runs on
SPARE's trainer with its own parameters, anchor, schedule and ``x_t``.

The paper draws ``x_t`` with the model being edited: from pure noise, ``k``
of 50 DDIM steps with classifier-free guidance 3 on the concept prompt, ``k``
uniform in 1..49, then trains at the timestep the latent has reached (the
authors' script train-esd.py: ``ddim_steps=50``, ``start_guidance=3``; LECO's
train_lora.py does the same with ``randint(1, 50)``).
:class:`EditedModelSampling` is that source; the cheap alternative is the
trainer's own forward-noised images of the base model.
"""

from __future__ import annotations

import torch

from ..backend import Conditioning, DiffusionBackend

#: DDIM steps of the paper's x_t sampling, and its classifier-free guidance.
ESD_DDIM_STEPS = 50
ESD_START_GUIDANCE = 3.0


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The timesteps of a ``steps``-step DDIM run, noisiest first, evenly spaced from 0
    (diffusers' "leading" spacing: 980, 960, ..., 0 for 1000 and 50)."""
    stride = num_train_timesteps // steps
    return [stride * i for i in reversed(range(steps))]


def signal_level(backend: DiffusionBackend, t: torch.Tensor) -> torch.Tensor:
    """``alpha_bar_t`` per timestep, read off the backend's own forward process.

    ``add_noise(1, 0, t) = sqrt(alpha_bar_t)`` for any variance-preserving model
    (backend contract, item 2), so no scheduler needs to be known here.
    """
    ones = torch.ones(len(t), 1, device=backend.device, dtype=torch.float32)
    return backend.add_noise(ones, torch.zeros_like(ones), t.to(backend.device)).float().pow(2).view(-1)


def ddim_step(
    x: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_next: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM step (eta 0) from ``x`` at ``alpha_bar_t`` to ``alpha_bar_next``."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    a_t, a_next = alpha_bar_t.view(shape).to(x), alpha_bar_next.view(shape).to(x)
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps


class EditedModelSampling:
    """ESD's forget batch: latents the edited model draws for the concept prompts, stopped part-way.

    Called by the trainer once per step with that step's generator; every
    sample of a batch stops after the same number of steps ``k`` (the paper's
    batch is one image).
    """

    def __init__(
        self,
        backend: DiffusionBackend,
        edit,
        concept_cond: Conditioning,
        unconditional: Conditioning,
        guidance: float = ESD_START_GUIDANCE,
        ddim_steps: int = ESD_DDIM_STEPS,
    ):
        if ddim_steps < 2:
            raise ValueError("ESD's x_t sampling needs at least 2 DDIM steps")
        self.backend, self.edit, self.concept_cond = backend, edit, concept_cond
        self.unconditional = unconditional.select(slice(0, 1))
        self.guidance, self.ddim_steps = guidance, ddim_steps
        self.timesteps = torch.tensor(ddim_timesteps(backend.num_train_timesteps, ddim_steps))
        self.alpha_bar = signal_level(backend, self.timesteps).cpu()

    def __call__(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self.concept_cond), (n,), generator=gen)
        k = int(torch.randint(1, self.ddim_steps, (1,), generator=gen))
        x = torch.randn((n, *self.backend.latent_shape), generator=gen).to(self.backend.device, self.backend.dtype)
        cond = Conditioning.cat([self.unconditional.repeat(n), self.concept_cond.select(index)])
        with torch.no_grad(), self.edit.applied():
            for i in range(k):
                t = self.timesteps[i].repeat(2 * n).to(self.backend.device)
                eps_u, eps_c = self.backend.predict_noise(torch.cat([x, x]), t, cond).float().chunk(2)
                eps = eps_u + self.guidance * (eps_c - eps_u)
                x = ddim_step(x.float(), eps, self.alpha_bar[i], self.alpha_bar[i + 1]).to(self.backend.dtype)
        t = self.timesteps[k].repeat(n).to(self.backend.device)
        return index, x, t
