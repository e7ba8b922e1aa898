"""UCE's closed-form edit of a linear projection (Gandikota et al. 2024, "Unified Concept Editing
in Diffusion Models", WACV).

UCE edits the cross-attention key and value projections so that the text
embedding ``c_i`` of each erased concept maps to what the original weights
gave for its guide ``g_i``, while preserved embeddings ``c_j`` keep their
outputs and the weights stay near ``W0``. It minimises

    lam ||W - W0||^2 + es sum_i ||W c_i - W0 g_i||^2 + ps sum_j ||W c_j - W0 c_j||^2,

whose normal equations give

    W = (lam W0 + es sum_i (W0 g_i) c_i^T + ps sum_j (W0 c_j) c_j^T)
        (lam I + es sum_i c_i c_i^T + ps sum_j c_j c_j^T)^-1.

Defaults follow the authors' current script (lam 0.5, erase and preserve
scales 1; rohitgandikota/unified-concept-editing, trainscripts/uce_sd_erase.py).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backend import Conditioning


def uce_edit(
    weight: torch.Tensor,
    erase: torch.Tensor,
    guide: torch.Tensor,
    preserve: torch.Tensor | None = None,
    lam: float = 0.5,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
) -> torch.Tensor:
    """The edited weight [out, in] of a bias-free projection.

    ``erase`` and ``guide`` are [n, in] (row i's erased embedding and its guide);
    ``preserve`` is [m, in] or None. Computed in float64 and returned in the
    weight's dtype.
    """
    if erase.shape != guide.shape or erase.ndim != 2:
        raise ValueError(f"erase and guide embeddings must be [n, in] of one shape, got {erase.shape}, {guide.shape}")
    if erase.shape[1] != weight.shape[1]:
        raise ValueError(f"embeddings have width {erase.shape[1]}, the projection takes {weight.shape[1]}")
    if lam <= 0:
        raise ValueError("lam must be positive: it keeps the system solvable and the edit near the original weights")
    w0 = weight.detach().double()
    c, g = erase.detach().double(), guide.detach().double()
    dim = w0.shape[1]
    lhs = lam * w0 + erase_scale * (w0 @ g.T) @ c
    gram = lam * torch.eye(dim, dtype=torch.float64) + erase_scale * c.T @ c
    if preserve is not None and len(preserve):
        p = preserve.detach().double()
        lhs = lhs + preserve_scale * (w0 @ p.T) @ p
        gram = gram + preserve_scale * p.T @ p
    # W gram = lhs, with gram symmetric positive definite: solve rather than invert.
    edited = torch.linalg.solve(gram, lhs.T).T
    return edited.to(weight.dtype)


def token_rows(cond: Conditioning) -> torch.Tensor:
    """Every token state of every prompt as one row, ``[prompts * tokens, dim]``."""
    return cond.hidden_states.reshape(-1, cond.hidden_states.shape[-1])


def uce_deltas(
    denoiser: nn.Module,
    module_names: list[str],
    concept_cond: Conditioning,
    guide_cond: Conditioning,
    preserve_cond: Conditioning | None,
    lam: float = 0.5,
    erase_scale: float = 1.0,
    preserve_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """``W_new - W0`` of each named key/value projection for erasing the concept prompts toward their guides.

    Each forget prompt's token states map to its guide prompt's states position
    by position (the twins differ only in the concept's word, so every position
    aligns, as the paper-era script aligns the tokens from the concept's last
    word on; positions before the word are equal and act as preserved).
    Every token state of the retained prompts keeps its output.
    """
    erase, guide = token_rows(concept_cond).float(), token_rows(guide_cond).float()
    preserve = token_rows(preserve_cond).float() if preserve_cond is not None else None
    modules = dict(denoiser.named_modules())
    deltas = {}
    for name in module_names:
        weight = modules[name].weight.detach().float().cpu()
        edited = uce_edit(
            weight,
            erase.cpu(),
            guide.cpu(),
            preserve.cpu() if preserve is not None else None,
            lam,
            erase_scale,
            preserve_scale,
        )
        deltas[name] = edited - weight
    return deltas
