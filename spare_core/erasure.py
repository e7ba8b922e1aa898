"""The stages of a SPARE erasure as separate calls, and ``erase`` composing them.

    sets = prepare_sets(backend, config)               # forget / surrogate / retain images, as latents
    profile = measure_profile(backend, config, sets)   # where in t the concept is decided
    saliency = select_modules(backend, config, sets, profile)   # which modules carry the adapter
    trained = train(backend, config, sets, saliency, profile)   # the sparse LoRA
    result = erase(backend, config)                    # all of the above

Each stage's result can be inspected, plotted, saved and loaded, and handed to
the next stage (the ComfyUI nodes are exactly these stages). Every stage takes
an optional event callback and cancel token (:mod:`spare_core.events`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .adapter import SparseLoRA
from .backend import DiffusionBackend, apply_model_settings
from .config import ErasureConfig, SettingsError
from .domain import Domain, GenericDomain
from .events import CancelToken, EventCallback, Monitor
from .fileio import save_safetensors
from .image_folder import load_image_folder, round_robin_index
from .images import fit_images
from .prompts import PromptSet, build_prompt_set
from .saliency import Saliency, compute_saliency
from .timesteps import TimestepProfile, TimestepSampler, compute_profile, default_grid
from .trainer import Probe, SelfDistillationTrainer, TrainingData, TrainingHistory

logger = logging.getLogger(__name__)

#: Seeds of the forget/retain sets start here; evaluation seeds stay below it.
DATA_SEED_BASE = 1_000_000
#: Where each set's seeds start, after DATA_SEED_BASE + seed * 10_000 (fixed: caches and the bench rely on them).
SET_SEED_OFFSETS = {"forget": 0, "surrogate": 2_500, "retain": 5_000}
#: The image sets stage 0 draws: the concept's, its surrogate's, and what must not change.
SET_KINDS = ("forget", "surrogate", "retain")
#: The model-level settings every stage applies to the backend first (``backend.configure``, contract item 9).
MODEL_SETTINGS = ("resolution", "prediction")
#: The settings that decide which modules a saliency selects (checked when a saved saliency is reused).
SELECTION_SETTINGS = ("saliency_mode", "module_scope", "top_k", "module_fraction", "timestep_mode", "seed")


class StageMismatch(ValueError):
    """A saved stage result does not belong to this erasure; the message says what differs."""


def configure_backend(backend: DiffusionBackend, config: ErasureConfig) -> None:
    """Apply ``config``'s model settings (resolution, prediction) to ``backend``; every stage calls it first.

    A value the model cannot take raises ``SettingsError`` saying what to use.
    """
    apply_model_settings(backend, resolution=config.resolution, prediction=config.prediction)


# --------------------------------------------------------------------------- stage 0: the sets


@dataclass
class ErasureSets:
    """The prompts of an erasure and the images (as latents) drawn or read for them."""

    prompts: PromptSet
    data: TrainingData

    def save(self, path: str | Path) -> None:
        """Write the latents and prompts to a safetensors file (the conditioning is re-encoded on load)."""
        d = self.data
        tensors = {
            "forget_latents": d.forget_latents,
            "forget_prompt_index": d.forget_prompt_index,
            "retain_latents": d.retain_latents,
            "retain_prompt_index": d.retain_prompt_index,
        }
        if d.surrogate_latents is not None:
            tensors["surrogate_latents"] = d.surrogate_latents
            tensors["surrogate_prompt_index"] = d.surrogate_prompt_index
        save_safetensors(tensors, path, metadata={"spare_sets": json.dumps(self.prompts.as_dict())})

    @classmethod
    def load(cls, path: str | Path, backend: DiffusionBackend) -> ErasureSets:
        """Read sets written by :meth:`save` for ``backend``'s model."""
        from .lora_file import read_safetensors

        tensors, metadata = read_safetensors(Path(path))
        if "spare_sets" not in metadata or "forget_latents" not in tensors:
            raise StageMismatch(f"{path} is not a SPARE sets file (written by ErasureSets.save)")
        prompts = PromptSet.from_dict(json.loads(metadata["spare_sets"]))
        if tuple(tensors["forget_latents"].shape[1:]) != tuple(backend.latent_shape):
            raise StageMismatch(
                f"{path} holds latents of shape {tuple(tensors['forget_latents'].shape[1:])}, "
                f"the model's are {tuple(backend.latent_shape)}: the sets were made for another model "
                "or at another resolution (configure the backend with the sets' settings first)"
            )
        return cls(prompts, _training_data(backend, prompts, tensors))


def _training_data(backend: DiffusionBackend, prompts: PromptSet, tensors: dict) -> TrainingData:
    return TrainingData(
        forget_latents=tensors["forget_latents"],
        forget_prompt_index=tensors["forget_prompt_index"],
        concept_cond=backend.encode_prompts(prompts.forget).detached_clone(),
        surrogate_cond=backend.encode_prompts(prompts.surrogate).detached_clone(),
        retain_latents=tensors["retain_latents"],
        retain_prompt_index=tensors["retain_prompt_index"],
        retain_cond=backend.encode_prompts(prompts.retain).detached_clone(),
        surrogate_latents=tensors.get("surrogate_latents"),
        surrogate_prompt_index=tensors.get("surrogate_prompt_index"),
    )


class _SetDrawer:
    """Draws the sets batch by batch, reporting ``data`` events and checking cancel at every denoising step."""

    def __init__(self, backend: DiffusionBackend, config: ErasureConfig, monitor: Monitor, total: int):
        self.backend, self.config, self.monitor = backend, config, monitor
        self.total, self.done = total, 0

    def draw(self, kind: str, prompts: list[str], index: list[int], seeds: list[int]) -> torch.Tensor:
        batch = self.config.generation_batch_size
        latents = []
        for start in range(0, len(index), batch):
            self.monitor.check()
            chunk = index[start : start + batch]
            images = self.backend.sample(
                [prompts[i] for i in chunk],
                seeds[start : start + batch],
                self.config.sample_steps,
                self.config.sample_guidance,
                on_step=self.monitor.check,
            )
            latents.append(self.backend.encode_images(images).float().cpu())
            self.done += len(chunk)
            self.monitor.emit("data", self.done, self.total, message=f"{kind} images")
        return torch.cat(latents)


def _cache_key(kind: str, prompts: list[str], per_prompt: int, seed: int, config: ErasureConfig) -> str:
    fields = [kind, config.base_model, str(per_prompt), str(seed), str(config.sample_steps)]
    fields += [str(config.sample_guidance), str(config.generation_batch_size), *prompts]
    # Model settings shape the images too; at their defaults they stay out, so older caches remain valid.
    fields += [f"{name}={getattr(config, name)}" for name in MODEL_SETTINGS if getattr(config, name)]
    return hashlib.sha256("\n".join(fields).encode()).hexdigest()[:16]


def prepare_sets(
    backend: DiffusionBackend,
    config: ErasureConfig,
    *,
    domain: Domain | None = None,
    cache_dir: str | Path | None = None,
    on_event: EventCallback | None = None,
    cancel: CancelToken | None = None,
    forget_images: torch.Tensor | None = None,
    kinds: Collection[str] = SET_KINDS,
) -> ErasureSets:
    """Stage 0: the prompt set, and the forget, surrogate and retain images as latents.

    Images the frozen model draws for the prompts (or the user's own: the
    folders the config names, or ``forget_images``, ``[N, 3, H, W]`` in
    [-1, 1], centre-cropped and resized to the model's size; image ``i`` goes
    with forget prompt ``i mod n``), drawn in batches of
    ``config.generation_batch_size``, all at ``config.resolution`` (0: the
    model's native size). With ``cache_dir`` each drawn set is
    kept, keyed by everything that shapes it, and re-used; a cancelled run
    leaves no partial set there. ``kinds`` limits what is drawn (a set left
    out is empty): a method that trains on the forget images alone draws no
    other, so its clock holds nothing it does not use.
    """
    unknown = set(kinds) - set(SET_KINDS)
    if unknown or "forget" not in kinds:
        raise ValueError(f"kinds must include 'forget' and name only {', '.join(SET_KINDS)}; got {sorted(kinds)}")
    if forget_images is not None and config.forget_image_dir:
        raise ValueError("give your forget images either as forget_images or as forget_image_dir, not both")
    config.validate()
    configure_backend(backend, config)
    monitor = Monitor(on_event, cancel)
    prompts = build_prompt_set(config, domain_for(backend, domain))
    own = _users_images(backend, config, forget_images, kinds)
    per_retain = max(1, -(-config.retain_images // len(prompts.retain)))
    plan = [("forget", prompts.forget, config.images_per_prompt)]
    if config.surrogate_images_per_prompt > 0 and "surrogate" in kinds:
        plan.append(("surrogate", prompts.surrogate, config.surrogate_images_per_prompt))
    if "retain" in kinds:
        plan.append(("retain", prompts.retain, per_retain))
    drawer = _SetDrawer(backend, config, monitor, sum(len(p) * n for kind, p, n in plan if kind not in own))
    names = [kind for kind, _, _ in plan]
    listed = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]
    monitor.emit("data", 0, drawer.total, message=f"drawing the {listed} images")
    tensors: dict[str, torch.Tensor] = {}
    for kind, prompt_list, per_prompt in plan:
        if kind in own:
            latents = torch.cat([backend.encode_images(chunk).float().cpu() for chunk in own[kind].split(16)])
            index = round_robin_index(len(latents), len(prompt_list))
        else:
            latents, index = _drawn_latents(drawer, kind, prompt_list, per_prompt, config, cache_dir)
        tensors[f"{kind}_latents"], tensors[f"{kind}_prompt_index"] = latents, index
    if "retain" not in kinds:
        tensors["retain_latents"] = torch.zeros((0, *tensors["forget_latents"].shape[1:]))
        tensors["retain_prompt_index"] = torch.zeros(0, dtype=torch.long)
    return ErasureSets(prompts, _training_data(backend, prompts, tensors))


def _users_images(
    backend: DiffusionBackend, config: ErasureConfig, forget_images: torch.Tensor | None, kinds: Collection[str]
) -> dict[str, torch.Tensor]:
    """The user's own images by set (``forget``, ``retain``; those in ``kinds``), at the model's size, from
    folders or a batch."""
    own = {}
    for kind, folder in (("forget", config.forget_image_dir), ("retain", config.retain_image_dir)):
        if folder and kind in kinds:
            own[kind] = load_image_folder(folder, backend.image_size)
            logger.info("read %d %s images from %s", len(own[kind]), kind, folder)
    if forget_images is not None:
        own["forget"] = fit_images(forget_images, backend.image_size)
    return own


def domain_for(backend: DiffusionBackend, domain: Domain | None) -> Domain:
    """The domain given, else the one the model brings, else the generic one."""
    return domain or backend.domain or GenericDomain()


def _drawn_latents(
    drawer: _SetDrawer,
    kind: str,
    prompts: list[str],
    per_prompt: int,
    config: ErasureConfig,
    cache_dir: str | Path | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    seed = DATA_SEED_BASE + config.seed * 10_000 + SET_SEED_OFFSETS[kind]
    index = [i for i in range(len(prompts)) for _ in range(per_prompt)]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{kind}-{_cache_key(kind, prompts, per_prompt, seed, config)}.safetensors"
        if path.exists():
            data = load_file(path)
            drawer.done += len(index)
            drawer.monitor.emit("data", drawer.done, drawer.total, message=f"{kind} images (cached)")
            return data["latents"], data["prompt_index"]
    latents = drawer.draw(kind, prompts, index, [seed + k for k in range(len(index))])
    prompt_index = torch.tensor(index)
    if path is not None:
        save_safetensors({"latents": latents, "prompt_index": prompt_index}, path)
    return latents, prompt_index


# --------------------------------------------------------------------------- stage 1: the timestep profile


def measure_profile(
    backend: DiffusionBackend,
    config: ErasureConfig,
    sets: ErasureSets,
    *,
    on_event: EventCallback | None = None,
    cancel: CancelToken | None = None,
) -> TimestepProfile:
    """Stage 1: the timestep profile of the first concept (its first forget prompt), on its forget latents.

    With ``profile_contrast`` and a domain that names two other concepts of the
    same kind, the profile is divided by how much those two differ.
    """
    configure_backend(backend, config)
    monitor = Monitor(on_event, cancel)
    prompts, data = sets.prompts, sets.data
    first = prompts.concept_of.index(0)
    latents = data.forget_latents[data.forget_prompt_index == first]
    if len(latents) == 0:
        latents = data.forget_latents[:8]

    def progress(done: int, total: int) -> None:
        monitor.emit("profile", done, total)
        monitor.check()

    monitor.check()
    return compute_profile(
        backend,
        latents,
        prompts.forget[first],
        prompts.surrogate[first],
        contrast_prompts=prompts.contrast if config.profile_contrast else None,
        grid=default_grid(backend.num_train_timesteps, config.profile_points),
        gamma=config.profile_gamma,
        floor=config.profile_floor,
        seed=config.seed,
        progress=progress,
    )


def timestep_sampler(
    backend: DiffusionBackend, config: ErasureConfig, profile: TimestepProfile | None
) -> TimestepSampler:
    """The training timestep distribution: the profile's (with the config's gamma and floor) or uniform."""
    if config.timestep_mode == "uniform":
        return TimestepSampler.uniform(backend.num_train_timesteps)
    if profile is None:
        raise StageMismatch("timestep_mode is 'profile' but no profile was given; measure it with measure_profile")
    if profile.num_train_timesteps != backend.num_train_timesteps:
        raise StageMismatch(
            f"the profile was measured on a model with {profile.num_train_timesteps} timesteps, "
            f"this one has {backend.num_train_timesteps}"
        )
    return TimestepSampler.from_profile(
        dataclasses.replace(profile, gamma=config.profile_gamma, floor=config.profile_floor)
    )


def check_profile(profile: TimestepProfile, prompts: PromptSet) -> None:
    """Raise StageMismatch if ``profile`` was measured for other prompts than the first concept's."""
    first = prompts.concept_of.index(0)
    expected = (prompts.forget[first], prompts.surrogate[first])
    if (profile.concept, profile.surrogate) != expected:
        raise StageMismatch(
            f"the profile was measured for {profile.concept!r} -> {profile.surrogate!r}, "
            f"this erasure needs {expected[0]!r} -> {expected[1]!r}; measure it again"
        )


# --------------------------------------------------------------------------- stage 2: module selection


def select_modules(
    backend: DiffusionBackend,
    config: ErasureConfig,
    sets: ErasureSets,
    profile: TimestepProfile | None = None,
    *,
    on_event: EventCallback | None = None,
    cancel: CancelToken | None = None,
) -> Saliency:
    """Stage 2: saliency of every candidate module, and the modules selected to carry the adapter.

    Each concept gets its own saliency on its own forget prompts and its own
    top modules; the selection is their union (one joint ranking let a style
    crowd out an object in a two-concept erasure). Gradients are taken at
    timesteps drawn as training will draw them, so with ``timestep_mode``
    ``profile`` the profile is needed: it is measured here when not given.
    The result's ``selected`` holds the chosen modules; its scores hold, per
    module, the largest score any concept gave it (each scaled to a maximum of 1).
    """
    configure_backend(backend, config)
    monitor = Monitor(on_event, cancel)
    if config.timestep_mode == "profile" and profile is None:
        profile = measure_profile(backend, config, sets, on_event=on_event, cancel=cancel)
    sampler = timestep_sampler(backend, config, profile)
    prompts, data = sets.prompts, sets.data
    per_concept = []
    n = len(config.concepts)
    for i, pair in enumerate(config.concepts):
        mine = [j for j, c in enumerate(prompts.concept_of) if c == i]
        keep = torch.isin(data.forget_prompt_index, torch.tensor(mine))
        remap = {old: new for new, old in enumerate(mine)}
        index = torch.tensor([remap[int(k)] for k in data.forget_prompt_index[keep]])

        def progress(done: int, total: int, i: int = i, concept: str = pair.concept) -> None:
            monitor.emit("saliency", i * total + done, n * total, message=concept)
            monitor.check()

        monitor.check()
        per_concept.append(
            compute_saliency(
                backend,
                data.forget_latents[keep],
                index,
                [prompts.forget[j] for j in mine],
                [prompts.surrogate[j] for j in mine],
                mode=config.saliency_mode,
                retain_latents=data.retain_latents,
                retain_prompt_index=data.retain_prompt_index,
                retain_prompts=prompts.retain,
                scope=config.module_scope,
                batches=config.saliency_batches,
                batch_size=config.batch_size,
                sampler=sampler,
                seed=config.seed + i,
                concept=pair.concept,
                progress=progress,
            )
        )
    modules: list[str] = []
    for saliency in per_concept:
        for name in saliency.select_modules(fraction=config.module_fraction, top_k=config.top_k):
            if name not in modules:
                modules.append(name)
    merged = per_concept[0] if n == 1 else _merge(per_concept, config)
    merged.selected = modules
    merged.settings = {name: getattr(config, name) for name in SELECTION_SETTINGS}
    merged.settings["concepts"] = [p.concept for p in config.concepts]
    return merged


def _merge(per_concept: list[Saliency], config: ErasureConfig) -> Saliency:
    scores, channels = {}, {}
    for name in per_concept[0].module_scores:
        scores[name] = max(s.module_scores[name] / (max(s.module_scores.values()) or 1.0) for s in per_concept)
        stacked = torch.stack([torch.tensor(s.channel_scores[name]) for s in per_concept])
        channels[name] = (stacked / stacked.amax(dim=1, keepdim=True).clamp_min(1e-30)).amax(0).tolist()
    concepts = ", ".join(p.concept for p in config.concepts)
    return Saliency(config.saliency_mode, scores, channels, concepts)


def check_saliency(saliency: Saliency, config: ErasureConfig) -> None:
    """Raise StageMismatch unless ``saliency`` selected modules with this config's selection settings."""
    if not saliency.selected:
        raise StageMismatch("the saliency holds no selected modules; make it with select_modules")
    expected = {name: getattr(config, name) for name in SELECTION_SETTINGS}
    expected["concepts"] = [p.concept for p in config.concepts]
    differ = [
        f"{k}={saliency.settings.get(k)!r} (now {v!r})" for k, v in expected.items() if saliency.settings.get(k) != v
    ]
    if differ:
        raise StageMismatch(f"the saliency was computed with other settings: {', '.join(differ)}; compute it again")


# --------------------------------------------------------------------------- stage 3: training


@dataclass
class TrainedAdapter:
    """The trained sparse LoRA and its loss history."""

    adapter: SparseLoRA
    history: TrainingHistory


def train(
    backend: DiffusionBackend,
    config: ErasureConfig,
    sets: ErasureSets,
    saliency: Saliency,
    profile: TimestepProfile | None = None,
    *,
    on_event: EventCallback | None = None,
    cancel: CancelToken | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    probe: Probe | None = None,
    probe_every: int = 10,
) -> TrainedAdapter:
    """Stage 3: train a sparse LoRA on ``saliency.selected`` by self-distillation toward the surrogates.

    Timesteps are drawn from ``profile`` (``timestep_mode`` ``profile``) or
    uniformly. With ``checkpoint`` the run saves its state every
    ``checkpoint_every`` steps and resumes from that file when started again.
    ``probe(step, adapter)`` runs every ``probe_every`` steps (a benchmark's UA along training).
    """
    config.validate()
    configure_backend(backend, config)
    check_saliency(saliency, config)
    sampler = timestep_sampler(backend, config, profile)
    masks = saliency.row_masks(saliency.selected, config.channel_fraction) if config.channel_fraction < 1 else None
    adapter = SparseLoRA(backend.denoiser(), saliency.selected, config.rank, config.alpha, masks, seed=config.seed)
    adapter.to(backend.device)  # initialised on the CPU (the same weights on every device), trained beside the model
    trainer = SelfDistillationTrainer(backend, adapter, sets.data, sampler, config)
    park_encoders = getattr(backend, "park_encoders", None)  # optional (contract): free the accelerator for the UNet
    if park_encoders is not None:
        park_encoders()
    with gradient_checkpointing(backend.denoiser(), config.gradient_checkpointing):
        history = trainer.run(Monitor(on_event, cancel), checkpoint, checkpoint_every, probe, probe_every)
    return TrainedAdapter(adapter, history)


@contextmanager
def gradient_checkpointing(denoiser: nn.Module, enabled: bool) -> Iterator[None]:
    """Activation checkpointing on a diffusers denoiser for the duration of training, switched off afterwards.

    diffusers recomputes each block's activations in the backward pass (non-reentrant
    ``torch.utils.checkpoint``), so the adapter's hooks run again and the gradients are unchanged.
    """
    if not enabled:
        yield
        return
    if not getattr(denoiser, "_supports_gradient_checkpointing", False):
        raise SettingsError(
            f"gradient_checkpointing is not supported for this model ({type(denoiser).__name__}); "
            "turn it off, or lower batch_size or resolution to save memory"
        )
    denoiser.enable_gradient_checkpointing()
    try:
        yield
    finally:
        denoiser.disable_gradient_checkpointing()


# --------------------------------------------------------------------------- everything


@dataclass
class ErasureResult:
    """Everything an erasure produced; ``seconds`` is the run's timing report (never stored in the LoRA)."""

    config: ErasureConfig
    sets: ErasureSets
    profile: TimestepProfile | None
    saliency: Saliency
    adapter: SparseLoRA
    history: TrainingHistory
    seconds: dict[str, float]

    @property
    def selected_modules(self) -> list[str]:
        return self.saliency.selected


def erase(
    backend: DiffusionBackend,
    config: ErasureConfig,
    *,
    domain: Domain | None = None,
    cache_dir: str | Path | None = None,
    on_event: EventCallback | None = None,
    cancel: CancelToken | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    sets: ErasureSets | None = None,
    profile: TimestepProfile | None = None,
    saliency: Saliency | None = None,
    forget_images: torch.Tensor | None = None,
    probe: Probe | None = None,
    probe_every: int = 10,
) -> ErasureResult:
    """Run every stage in order (re-using any stage result given) and return the trained adapter.

    A given ``profile`` or ``saliency`` is checked against this erasure's
    prompts and settings first. ``forget_images`` are the user's own images
    of the concept (see :func:`prepare_sets`). ``probe(step, adapter)`` runs during
    training every ``probe_every`` steps (see :func:`train`).
    """
    if sets is not None and forget_images is not None:
        raise ValueError("forget_images are used to make the sets: give them or the sets, not both")
    config.validate()
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable):
        start = time.perf_counter()
        value = fn()
        seconds[name] = round(time.perf_counter() - start, 2)
        return value

    if saliency is not None:
        check_saliency(saliency, config)
    if profile is not None:  # checked on the prompts, before any image is drawn
        check_profile(profile, sets.prompts if sets else build_prompt_set(config, domain_for(backend, domain)))
    if sets is None:
        sets = timed(
            "data",
            lambda: prepare_sets(
                backend,
                config,
                domain=domain,
                cache_dir=cache_dir,
                on_event=on_event,
                cancel=cancel,
                forget_images=forget_images,
            ),
        )
    if profile is None and config.timestep_mode == "profile":
        profile = timed("profile", lambda: measure_profile(backend, config, sets, on_event=on_event, cancel=cancel))
    if saliency is None:
        saliency = timed(
            "saliency", lambda: select_modules(backend, config, sets, profile, on_event=on_event, cancel=cancel)
        )
    trained = timed(
        "train",
        lambda: train(
            backend,
            config,
            sets,
            saliency,
            profile,
            on_event=on_event,
            cancel=cancel,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            probe=probe,
            probe_every=probe_every,
        ),
    )
    return ErasureResult(config, sets, profile, saliency, trained.adapter, trained.history, seconds)
