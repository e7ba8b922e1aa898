"""The published baselines as declared methods, and running one on a backend.

Each method is a :class:`BaselineMethod`: which modules it changes, how (a
full-weight update or a LoRA), its anchor, where its ``x_t`` come from, and
its published optimisation defaults. :func:`run_baseline` runs it on SPARE's
backend and trainer, so that a comparison with SPARE compares objectives,
not code paths. The SPARE ablations are SPARE settings, not methods here.

Sources of the defaults:

* ESD-x / ESD-u: the authors' paper script (rohitgandikota/erasing,
  train-scripts/train-esd.py): Adam, lr 1e-5, 1000 iterations, batch 1,
  ``negative_guidance`` (eta) 1, x_t after k of 50 DDIM steps at guidance 3;
  ESD-x trains the cross-attention (``attn2``), ESD-u every other layer but
  the time embedding and the output layer.
* LECO (p1atdev/LECO, config_util.py and train_lora.py): ESD's target as a
  LoRA of rank 4 and alpha 1 on the layers of the transformer blocks, AdamW,
  constant lr 1e-4, 500 iterations.
* The anchor variants train on forward-noised images drawn beforehand by the
  original model (here of the concept's prompts), as Concept Ablation trains
  on noised images generated once (of the anchor concept, there), rather than
  on ESD's trajectories of the model being edited; the trajectories cost a
  partial sampling run per step (about ten times the step). ``esd_x_noised``
  / ``esd_u_noised`` are ESD's own target (empty anchor) on the same images.
* UCE (rohitgandikota/unified-concept-editing, trainscripts/uce_sd_erase.py):
  a closed-form edit of the cross-attention keys and values, lam 0.5, erase and
  preserve scales 1.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..adapter import SparseLoRA
from ..backend import DiffusionBackend, adaptable_modules
from ..config import ErasureConfig
from ..domain import Domain
from ..erasure import ErasureSets, configure_backend, domain_for, prepare_sets
from ..events import CancelToken, EventCallback, Monitor
from ..lora import lora_from_adapter
from ..prompts import build_prompt_set
from ..timesteps import TimestepSampler
from ..trainer import Probe, SelfDistillationTrainer, TrainingData, TrainingHistory, constant_lr
from ..weight_delta import WeightDelta, save_delta_file
from .esd import ESD_DDIM_STEPS, ESD_START_GUIDANCE, EditedModelSampling
from .uce import uce_deltas

#: Which layers a method changes (diffusers module names).
MODULE_SETS = ("cross_attention", "non_cross_attention", "transformer", "cross_attention_kv")


@dataclass(frozen=True)
class BaselineMethod:
    """One published erasure method, as this harness runs it."""

    name: str
    title: str
    objective: str  # "esd" (negative guidance, trained) or "uce" (closed form)
    modules: str  # one of MODULE_SETS
    parametrisation: str = "full"  # "full" (a weight delta) or "lora"
    anchor: str = "empty"  # "empty" (the paper's) or "surrogate" (the anchor-concept variant)
    x_t: str = "sampled"  # "sampled" by the edited model, or "noised" base images
    lr: float = 1e-5
    steps: int = 1000
    batch_size: int = 1
    eta: float = 1.0
    rank: int = 4
    alpha: float = 1.0
    guidance: float = ESD_START_GUIDANCE
    ddim_steps: int = ESD_DDIM_STEPS
    lam: float = 0.5
    erase_scale: float = 1.0
    preserve_scale: float = 1.0

    @property
    def trained(self) -> bool:
        return self.objective == "esd"


def _esd(name: str, title: str, modules: str, **kw) -> BaselineMethod:
    return BaselineMethod(name, title, "esd", modules, **kw)


#: Every baseline by name.
BASELINES: dict[str, BaselineMethod] = {
    m.name: m
    for m in (
        _esd("esd_x", "ESD-x (published)", "cross_attention"),
        _esd("esd_u", "ESD-u (published)", "non_cross_attention"),
        _esd("esd_x_anchor", "ESD-x, surrogate as anchor", "cross_attention", anchor="surrogate", x_t="noised"),
        _esd("esd_u_anchor", "ESD-u, surrogate as anchor", "non_cross_attention", anchor="surrogate", x_t="noised"),
        _esd("esd_x_noised", "ESD-x, noised base images as x_t", "cross_attention", x_t="noised"),
        _esd("esd_u_noised", "ESD-u, noised base images as x_t", "non_cross_attention", x_t="noised"),
        _esd("leco", "LECO (ESD's target as a LoRA)", "transformer", parametrisation="lora", lr=1e-4, steps=500),
        BaselineMethod("uce", "UCE (closed form)", "uce", "cross_attention_kv", anchor="surrogate", steps=0),
    )
}


def get_method(name: str) -> BaselineMethod:
    try:
        return BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; use one of {', '.join(BASELINES)}") from None


def method_modules(denoiser: nn.Module, module_set: str) -> list[str]:
    """The Linear/Conv2d layers a method changes (diffusers names).

    ``non_cross_attention`` follows the paper script's ESD-u ("noxattn"): every
    layer but the cross-attention, the time embedding and the output layer.
    Only the layers' weights change, never biases or norms, so that every
    edit exports as a weight update.
    """
    names = list(adaptable_modules(denoiser))
    if module_set == "cross_attention":
        return [n for n in names if ".attn2." in n]
    if module_set == "cross_attention_kv":
        return [n for n in names if re.search(r"\.attn2\.(to_k|to_v)$", n)]
    if module_set == "non_cross_attention":
        return [n for n in names if ".attn2." not in n and not n.startswith(("time_embedding", "conv_out"))]
    if module_set == "transformer":
        return [n for n in names if ".attentions." in n]
    raise ValueError(f"unknown module set {module_set!r}; use one of {', '.join(MODULE_SETS)}")


@dataclass
class BaselineResult:
    """A baseline's edit of the model, with what it cost."""

    method: BaselineMethod
    config: ErasureConfig
    edit: WeightDelta | SparseLoRA
    history: TrainingHistory | None
    seconds: float  # the edit itself; excludes the shared image sets and any probe
    lr: float
    steps: int

    @contextmanager
    def applied(self, strength: float = 1.0) -> Iterator[WeightDelta | SparseLoRA]:
        with self.edit.applied(strength) as edit:
            yield edit

    def num_trainable(self) -> int:
        return self.edit.num_trainable()

    def save(self, path: str | Path, backend: DiffusionBackend, metadata: dict[str, str] | None = None) -> Path:
        """A LoRA file for a LoRA method, a full-weight delta file (``*.delta.safetensors``) otherwise."""
        meta = {
            "spare_baseline": self.method.name,
            "spare_concepts": json.dumps([[p.concept, p.surrogate] for p in self.config.concepts]),
            **(metadata or {}),
        }
        if isinstance(self.edit, SparseLoRA):
            return lora_from_adapter(self.edit, backend, self.config, meta).write(path)
        return save_delta_file(self.edit.export(), backend.lora_layer_names(self.edit.module_names), path, meta)


def run_baseline(
    backend: DiffusionBackend,
    method: BaselineMethod | str,
    config: ErasureConfig,
    *,
    sets: ErasureSets | None = None,
    lr: float | None = None,
    steps: int | None = None,
    domain: Domain | None = None,
    cache_dir: str | Path | None = None,
    on_event: EventCallback | None = None,
    cancel: CancelToken | None = None,
    probe: Probe | None = None,
    probe_every: int = 10,
) -> BaselineResult:
    """Erase ``config``'s concepts with a baseline; ``lr`` and ``steps`` override the method's defaults.

    The prompts are SPARE's (the forget prompts of each concept, their
    surrogate twins, the retain prompts), so every method reads the same text.
    A method whose ``x_t`` are noised base images uses ``sets`` (when not
    given, only the forget images are drawn here: nothing else is trained on,
    so nothing else is on its clock). ``config`` supplies the concepts, the
    seed and the image settings; the method supplies everything it trains with.
    """
    method = get_method(method) if isinstance(method, str) else method
    config.validate()
    configure_backend(backend, config)
    lr = method.lr if lr is None else lr
    steps = method.steps if steps is None else steps
    prompts = sets.prompts if sets is not None else build_prompt_set(config, domain_for(backend, domain))
    if method.x_t == "noised" and method.trained and sets is None:
        sets = prepare_sets(
            backend, config, domain=domain, cache_dir=cache_dir, on_event=on_event, cancel=cancel, kinds=("forget",)
        )
    start = time.perf_counter()
    probe_seconds = [0.0]
    denoiser = backend.denoiser()
    modules = method_modules(denoiser, method.modules)
    concept_cond = backend.encode_prompts(prompts.forget).detached_clone()
    if method.anchor == "surrogate":
        anchor_cond = backend.encode_prompts(prompts.surrogate).detached_clone()
    else:
        anchor_cond = backend.encode_prompts([""]).detached_clone().repeat(len(prompts.forget))

    if not method.trained:
        edit = WeightDelta(denoiser, modules)
        retain_cond = backend.encode_prompts(prompts.retain).detached_clone()
        deltas = uce_deltas(
            denoiser,
            modules,
            concept_cond,
            anchor_cond,
            retain_cond,
            method.lam,
            method.erase_scale,
            method.preserve_scale,
        )
        for name, delta in deltas.items():
            edit.set_delta(name, delta)
        edit.to(backend.device)
        return BaselineResult(method, config, edit, None, round(time.perf_counter() - start, 2), lr, 0)

    if method.parametrisation == "lora":
        edit = SparseLoRA(denoiser, modules, method.rank, method.alpha, seed=config.seed)
    else:
        edit = WeightDelta(denoiser, modules)
    edit.to(backend.device)
    train_config = config.with_settings(
        lr=lr,
        steps=max(1, steps),
        batch_size=method.batch_size,
        eta=method.eta,
        retain_weight=0.0,
        preserve_weight=0.0,
        robust=0.0,
        weight_decay=0.0,
        grad_clip=0.0,
        timestep_mode="uniform",
    )
    empty = torch.zeros((0, *backend.latent_shape))
    if sets is not None:
        forget_latents, forget_index = sets.data.forget_latents, sets.data.forget_prompt_index
    else:
        forget_latents, forget_index = empty, torch.zeros(0, dtype=torch.long)
    data = TrainingData(
        forget_latents,
        forget_index,
        concept_cond,
        anchor_cond,
        retain_latents=empty,
        retain_prompt_index=torch.zeros(0, dtype=torch.long),
        retain_cond=concept_cond,
    )
    source = None
    if method.x_t == "sampled":
        unconditional = backend.encode_prompts([""]).detached_clone()
        source = EditedModelSampling(backend, edit, concept_cond, unconditional, method.guidance, method.ddim_steps)
    trainer = SelfDistillationTrainer(
        backend,
        edit,
        data,
        TimestepSampler.uniform(backend.num_train_timesteps),
        train_config,
        forget_source=source,
        lr_schedule=constant_lr,
    )

    def timed_probe(step: int, adapter) -> None:
        began = time.perf_counter()
        probe(step, adapter)
        probe_seconds[0] += time.perf_counter() - began

    history = trainer.run(Monitor(on_event, cancel), probe=timed_probe if probe else None, probe_every=probe_every)
    seconds = time.perf_counter() - start - probe_seconds[0]
    return BaselineResult(method, train_config, edit, history, round(seconds, 2), lr, steps)
