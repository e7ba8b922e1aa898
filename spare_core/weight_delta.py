"""A full-rank weight update on named Linear/Conv2d modules: what full fine-tuning and closed-form edits change.

The baselines that fine-tune whole projections (ESD) or edit them in closed
form (UCE) change a module's weight ``W`` to ``W + D``. :class:`WeightDelta`
holds ``D`` and adds ``strength * D x`` to the module's output through a
forward hook, exactly as :class:`~spare_core.adapter.SparseLoRA` adds its
low-rank branch, so the trainer, the evaluation and the previews treat both
alike and the base model is never edited. Training ``D`` from zero with Adam
follows the same path as training ``W`` itself: the gradients are equal.

Exported as a *full-weight delta file*: one ``<layer>.diff`` tensor per
module under the kohya layer names a LoRA uses, the format ComfyUI's LoRA
loader applies as a weight difference (``comfy/lora.py``, ``load_lora``
reads ``{layer}.diff``). It is not a LoRA and is named ``*.delta.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .adapter import HookedEdit
from .fileio import save_safetensors

#: File name ending of an exported full-weight delta.
DELTA_SUFFIX = ".delta.safetensors"


class WeightDelta(HookedEdit):
    """Trainable full-rank updates ``D`` of named modules of a denoiser, attached by forward hooks."""

    def __init__(self, denoiser: nn.Module, module_names: Sequence[str]):
        super().__init__()
        self._set_targets(denoiser, module_names)
        for name, target in zip(self.module_names, self._targets, strict=True):
            if not isinstance(target, (nn.Linear, nn.Conv2d)) or getattr(target, "groups", 1) != 1:
                raise TypeError(f"{name} is a {type(target).__name__}; a weight delta needs a Linear or plain Conv2d")
        with torch.inference_mode(False):
            self.deltas = nn.ParameterList(
                nn.Parameter(torch.zeros(t.weight.shape, dtype=torch.float32)) for t in self._targets
            )

    def _change(self, index: int, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        delta = self.deltas[index]
        x = x.to(delta.dtype)
        if isinstance(module, nn.Linear):
            return nn.functional.linear(x, delta)
        return nn.functional.conv2d(x, delta, stride=module.stride, padding=module.padding, dilation=module.dilation)

    # ------------------------------------------------------------------ weights

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.deltas)

    def num_trainable(self) -> int:
        return sum(d.numel() for d in self.deltas)

    def set_delta(self, name: str, delta: torch.Tensor) -> None:
        """Set one module's update (a closed-form edit's ``W_new - W_old``)."""
        param = self.deltas[self.module_names.index(name)]
        if tuple(delta.shape) != tuple(param.shape):
            raise ValueError(f"{name} needs a delta of shape {tuple(param.shape)}, got {tuple(delta.shape)}")
        with torch.inference_mode(False), torch.no_grad():
            param.copy_(delta.float())

    def export(self) -> dict[str, torch.Tensor]:
        """``D`` per module name."""
        return {name: d.detach().clone() for name, d in zip(self.module_names, self.deltas, strict=True)}


def save_delta_file(
    deltas: Mapping[str, torch.Tensor],
    layer_names: Mapping[str, str],
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``deltas`` (module name -> D) as ``<kohya layer>.diff`` tensors in fp16 to ``path``.

    ``layer_names`` maps module names to kohya layer names (``backend.lora_layer_names``).
    The path must end in ``.delta.safetensors``, so that nobody takes the file for a LoRA.
    """
    path = Path(path)
    if not path.name.endswith(DELTA_SUFFIX):
        raise ValueError(f"a full-weight delta file must be named *{DELTA_SUFFIX}, got {path.name}")
    tensors = {f"{layer_names[name]}.diff": d.detach().to(torch.float16).contiguous() for name, d in deltas.items()}
    meta = {"spare_format": "weight_delta", "spare_modules": json.dumps(sorted(deltas))}
    meta.update(metadata or {})
    save_safetensors(tensors, path, metadata=meta)
    return path


def read_delta_file(path: str | Path, backend) -> tuple[WeightDelta, dict[str, str]]:
    """A :class:`WeightDelta` on ``backend``'s model from a :func:`save_delta_file` file, and the file's metadata."""
    from .lora_file import LoraFileError, read_safetensors
    from .lora_naming import lookup_kohya_layer

    path = Path(path)
    tensors, metadata = read_safetensors(path)
    if metadata.get("spare_format") != "weight_delta" or not tensors:
        raise LoraFileError(f"{path} is not a full-weight delta file (written by SPARE's baselines)")
    not_diffs = [k for k in tensors if not k.endswith(".diff")]
    if not_diffs:
        raise LoraFileError(f"{path} holds {not_diffs[0]!r}, not a '<layer>.diff' weight difference")
    table = backend.lora_layer_table()
    try:
        names = {key: lookup_kohya_layer(key[: -len(".diff")], table) for key in tensors}
    except ValueError as exc:
        raise LoraFileError(f"{path.name}: {exc}") from exc
    delta = WeightDelta(backend.denoiser(), list(names.values()))
    for key, name in names.items():
        try:
            delta.set_delta(name, tensors[key])
        except ValueError as exc:
            raise LoraFileError(f"{path.name}: {exc}; the file was made for another model") from exc
    return delta.to(backend.device), metadata


def load_edit(path: str | Path, backend):
    """The edit a file holds, ready to apply on ``backend``: a LoRA (as a SparseLoRA) or a full-weight delta,
    with the erased ``(concept, surrogate)`` pairs its metadata names (empty if it names none)."""
    from .lora import read_lora

    path = Path(path)
    if path.name.endswith(DELTA_SUFFIX):
        edit, metadata = read_delta_file(path, backend)
    else:
        lora = read_lora(path)
        edit, metadata = lora.adapter(backend), lora.metadata
    pairs = [tuple(p) for p in json.loads(metadata.get("spare_concepts", "[]"))]
    return edit, pairs
