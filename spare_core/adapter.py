"""A sparse LoRA: low-rank updates on a chosen set of Linear/Conv2d modules.

The adapter never edits the base model: it attaches forward hooks that add
``strength * (alpha / r) * mask * up(down(x))`` to a module's output, and
removing the hooks restores the base outputs exactly. An optional per-module
row mask (output channels chosen by saliency) keeps the update exactly
rank ``r``: ``diag(m) (B A) = (diag(m) B) A``, so it exports as a plain LoRA.

peft's LoRA injection replaces modules in place and cannot express a row
mask; this wrapper is small enough to own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .lora_file import LoraModuleWeights


class LoraBranch(nn.Module):
    """The trainable low-rank branch of one Linear or Conv2d module."""

    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float,
        row_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        # Adapter weights must be ordinary tensors that autograd tracks, even when the adapter is
        # made inside torch.inference_mode() (every ComfyUI node runs there).
        with torch.inference_mode(False):
            self._build(base, rank, alpha, row_mask, generator)

    def _build(
        self,
        base: nn.Module,
        rank: int,
        alpha: float,
        row_mask: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> None:
        self.rank, self.alpha = rank, float(alpha)
        if isinstance(base, nn.Linear):
            self.kind = "linear"
            in_features, out_features = base.in_features, base.out_features
            down_shape: tuple[int, ...] = (rank, in_features)
            up_shape: tuple[int, ...] = (out_features, rank)
        elif isinstance(base, nn.Conv2d):
            if base.groups != 1:
                raise ValueError("grouped convolutions cannot carry a LoRA")
            self.kind = "conv"
            self.stride, self.padding, self.dilation = base.stride, base.padding, base.dilation
            in_features, out_features = base.in_channels, base.out_channels
            down_shape = (rank, in_features, *base.kernel_size)
            up_shape = (out_features, rank, 1, 1)
        else:
            raise TypeError(f"a LoRA needs a Linear or Conv2d module, not {type(base).__name__}")
        # float32 adapter weights whatever the base dtype: small and stable to train.
        down = torch.empty(down_shape, dtype=torch.float32)
        # Kaiming-uniform init of the down projection, as LoRA implementations commonly do; up starts
        # at zero so the adapter starts as the identity.
        bound = 1 / math.sqrt(math.prod(down_shape[1:]))
        down.uniform_(-bound, bound, generator=generator)
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(torch.zeros(up_shape, dtype=torch.float32))
        mask = torch.ones(out_features) if row_mask is None else row_mask.detach().float().clone()
        if mask.shape != (out_features,):
            raise ValueError(f"row mask has shape {tuple(mask.shape)}, the module has {out_features} output rows")
        self.register_buffer("row_mask", mask)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.down.dtype)
        if self.kind == "linear":
            h = nn.functional.linear(nn.functional.linear(x, self.down), self.up)
            return h * (self.scale * self.row_mask)
        h = nn.functional.conv2d(x, self.down, stride=self.stride, padding=self.padding, dilation=self.dilation)
        h = nn.functional.conv2d(h, self.up)
        return h * (self.scale * self.row_mask).view(1, -1, 1, 1)

    def export(self) -> LoraModuleWeights:
        """The branch as plain LoRA weights, with the row mask folded into ``up``."""
        mask = self.row_mask.view(-1, *([1] * (self.up.dim() - 1)))
        return LoraModuleWeights(
            down=self.down.detach().clone(), up=(self.up * mask).detach().clone(), alpha=self.alpha
        )


class HookedEdit(nn.Module):
    """A change added to named modules' outputs by forward hooks; removing the hooks restores the model.

    Subclasses set ``self._targets`` (the modules) and compute each one's change
    in ``_change``; the sparse LoRA and the full-rank weight delta of the
    baselines share attaching, detaching and the strength.
    """

    def __init__(self) -> None:
        super().__init__()
        self._targets: list[nn.Module] = []
        self._handles: list = []
        self.strength = 1.0

    def _set_targets(self, denoiser: nn.Module, module_names: Sequence[str]) -> dict[str, nn.Module]:
        """Target the named modules of ``denoiser`` (ValueError naming an unknown one); returns every module."""
        if not module_names:
            raise ValueError("the edit needs at least one target module")
        modules = dict(denoiser.named_modules())
        missing = [n for n in module_names if n not in modules]
        if missing:
            raise ValueError(f"no module named {missing[0]!r} in the model ({len(missing)} unknown)")
        self.module_names = list(module_names)
        self._targets = [modules[n] for n in self.module_names]
        return modules

    def _change(self, index: int, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What target ``index`` adds to its output for input ``x`` (at strength 1)."""
        raise NotImplementedError

    def attach(self, strength: float = 1.0) -> HookedEdit:
        """Start adding the change to the target modules' outputs."""
        self.detach()
        self.strength = float(strength)
        for index, target in enumerate(self._targets):
            self._handles.append(target.register_forward_hook(self._hook(index)))
        return self

    def detach(self) -> None:
        """Remove every hook: the model computes exactly what it did before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def _hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            x = inputs[0]
            if x.is_inference():
                x = x.clone()  # a tensor made under inference_mode cannot be saved for backward
            return output + (self.strength * self._change(index, module, x)).to(output.dtype)

        return hook

    @contextmanager
    def applied(self, strength: float = 1.0) -> Iterator[HookedEdit]:
        """Attach for the duration of a ``with`` block (detached again even on error)."""
        self.attach(strength)
        try:
            yield self
        finally:
            self.detach()


class SparseLoRA(HookedEdit):
    """LoRA branches on named modules of a denoiser, attached by forward hooks."""

    def __init__(
        self,
        denoiser: nn.Module,
        module_names: Sequence[str],
        rank: int = 4,
        alpha: float = 4.0,
        row_masks: Mapping[str, torch.Tensor] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        modules = self._set_targets(denoiser, module_names)
        generator = torch.Generator().manual_seed(seed)
        self.branches = nn.ModuleList(
            LoraBranch(modules[n], rank, alpha, (row_masks or {}).get(n), generator) for n in self.module_names
        )

    @classmethod
    def from_weights(cls, denoiser: nn.Module, weights: Mapping[str, LoraModuleWeights]) -> SparseLoRA:
        """An adapter holding given LoRA weights (e.g. read from a file); ranks and alphas may differ per module."""
        adapter = cls(denoiser, list(weights), rank=1, alpha=1.0)
        modules = dict(denoiser.named_modules())
        branches = []
        for name, w in weights.items():
            branch = LoraBranch(modules[name], w.rank, w.alpha)
            w = _fit_one_by_one(w, branch)
            if branch.down.shape != w.down.shape or branch.up.shape != w.up.shape:
                raise ValueError(
                    f"LoRA weights for {name} have shapes {tuple(w.down.shape)}/{tuple(w.up.shape)}, "
                    f"the module needs {tuple(branch.down.shape)}/{tuple(branch.up.shape)}"
                )
            with torch.inference_mode(False), torch.no_grad():
                branch.down.copy_(w.down.float())
                branch.up.copy_(w.up.float())
            branches.append(branch)
        adapter.branches = nn.ModuleList(branches)
        return adapter

    def branch(self, name: str) -> LoraBranch:
        return self.branches[self.module_names.index(name)]

    def _change(self, index: int, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.branches[index](x)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for b in self.branches for p in (b.down, b.up)]

    def num_trainable(self) -> int:
        """Adapter weights that can change the model (masked-out rows of ``up`` excluded)."""
        total = 0
        for b in self.branches:
            total += b.down.numel() + int(b.row_mask.count_nonzero()) * b.rank
        return total

    def export(self) -> dict[str, LoraModuleWeights]:
        """Plain LoRA weights per module name, ready for :func:`spare_core.lora_file.save_lora_file`."""
        return {name: b.export() for name, b in zip(self.module_names, self.branches, strict=True)}


def _fit_one_by_one(w: LoraModuleWeights, branch: LoraBranch) -> LoraModuleWeights:
    """Read a 1x1-conv LoRA on a Linear, or a linear LoRA on a 1x1 conv, as the same update.

    SD1's ``proj_in``/``proj_out`` are 1x1 convs, SD2's and SDXL's are Linears; tools differ in which
    shape they write, and ComfyUI and Automatic1111 reshape either way (the update is the same matrix).
    """
    if branch.kind == "linear" and w.down.dim() == 4 and tuple(w.down.shape[2:]) == (1, 1):
        return LoraModuleWeights(w.down.flatten(1), w.up.flatten(1), w.alpha)
    if branch.kind == "conv" and w.down.dim() == 2 and tuple(branch.down.shape[2:]) == (1, 1):
        return LoraModuleWeights(w.down[:, :, None, None], w.up[:, :, None, None], w.alpha)
    return w


@contextmanager
def normal_weights(module: nn.Module) -> Iterator[None]:
    """Swap inference-mode parameters and buffers for normal clones, and restore the originals after.

    Weights created under ``torch.inference_mode()`` (how ComfyUI hands over
    models) cannot be saved for backward, which every frozen op after an
    adapter needs. The originals come back untouched when the block ends.
    """
    swapped: list[tuple[nn.Module, str, bool, torch.Tensor]] = []
    with torch.inference_mode(False):
        for sub in module.modules():
            for store, is_param in ((sub._parameters, True), (sub._buffers, False)):
                for name, tensor in list(store.items()):
                    if tensor is not None and tensor.is_inference():
                        swapped.append((sub, name, is_param, tensor))
                        copy = tensor.clone()
                        store[name] = nn.Parameter(copy, requires_grad=False) if is_param else copy
    try:
        yield
    finally:
        for sub, name, is_param, tensor in swapped:
            (sub._parameters if is_param else sub._buffers)[name] = tensor
