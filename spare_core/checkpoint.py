"""Optimizer state as flat tensors, so training checkpoints can be safetensors files."""

from __future__ import annotations

import torch


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "opt.") -> dict[str, torch.Tensor]:
    """Every per-parameter state tensor of ``optimizer`` under ``<prefix><param index>.<name>``."""
    tensors = {}
    for idx, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"{prefix}{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str = "opt."
) -> None:
    """Restore what :func:`optimizer_tensors` wrote (hyper-parameters stay as the optimizer has them)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, name = key[len(prefix) :].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    state_dict = optimizer.state_dict()
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)
