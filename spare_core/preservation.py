"""Text-state preservation: keep an edit's change small on the prompts that must not change.

The modules that read the prompt (the cross-attention keys and values) see
each prompt only through its text encoder's token states ``h``. An edit of such
a module changes its output by ``D(h)`` (``B A h`` for a LoRA). UCE
(Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024,
eq. 3) keeps ``|| D h_p ||^2`` small for the token states ``h_p`` of the
concepts it preserves and solves for the edit in closed form; here the same
term joins the trained objective as a penalty,

    preserve = mean over modules m of  mean_p || D_m(h_p) ||^2 / mean_p || W_m h_p ||^2,

over every token state of the retain and surrogate prompts, each module's term
relative to its own output energy so that modules of different widths weigh
alike. It needs no UNet pass, so it costs almost nothing per step, and unlike
the retain term (which sees the retain prompts at a few noise levels and
images) it constrains the edit on every timestep at once: where the concept's
token states lie close to a neighbour's, the edit has to find the direction
that tells them apart.
"""

from __future__ import annotations

import re

import torch

from .adapter import HookedEdit

__all__ = ["TEXT_READING_MODULE", "TextStatePreservation"]

#: The modules whose input is the prompt's token states (diffusers' cross-attention keys and values).
TEXT_READING_MODULE = re.compile(r"\.attn2\.(to_k|to_v)$")


class TextStatePreservation:
    """The preservation penalty of ``edit`` on ``states`` (token states, any leading shape, last dim the width).

    Only the edit's targets that read the prompt take part; with none of them the
    penalty is zero (``active`` is False).
    """

    def __init__(self, edit: HookedEdit, states: torch.Tensor):
        self.edit = edit
        self.targets = [
            (index, module)
            for index, (name, module) in enumerate(zip(edit.module_names, edit._targets, strict=True))
            if TEXT_READING_MODULE.search(name)
        ]
        self.states = states.detach().reshape(-1, states.shape[-1])
        with torch.no_grad():  # plain numbers: no tensor made here (perhaps under inference_mode) enters autograd
            self.energy = [
                max(module(self.states.to(module.weight.dtype)).float().pow(2).mean().item(), 1e-12)
                for _, module in self.targets
            ]

    @property
    def active(self) -> bool:
        return bool(self.targets)

    def loss(self) -> torch.Tensor:
        """The mean relative change energy over the text-reading targets (differentiable in the edit)."""
        if not self.targets:
            return torch.zeros(())
        # States made under inference_mode (ComfyUI runs nodes there) cannot be saved for backward.
        states = self.states.clone() if self.states.is_inference() else self.states
        terms = [
            self.edit._change(index, module, states).float().pow(2).mean() / energy
            for (index, module), energy in zip(self.targets, self.energy, strict=True)
        ]
        return torch.stack(terms).mean()
