"""The whole SPARE erasure: forget/retain sets, timestep profile, saliency, adapter, training.

Each stage is its own module and usable alone; this one wires them in order
for the CLI, the demo, the benchmark and (later) the ComfyUI nodes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .adapter import SparseLoRA
from .backend import DiffusionBackend
from .config import ErasureConfig
from .fileio import save_safetensors
from .image_folder import load_image_folder, round_robin_index
from .prompts import PromptSet, build_prompt_set
from .saliency import Saliency, compute_saliency
from .timesteps import TimestepProfile, TimestepSampler, compute_profile, default_grid
from .trainer import SelfDistillationTrainer, StepReport, TrainingData, TrainingHistory

logger = logging.getLogger(__name__)

#: Seeds of the forget/retain sets start here; evaluation seeds stay below it.
DATA_SEED_BASE = 1_000_000


@dataclass
class ErasureResult:
    config: ErasureConfig
    prompts: PromptSet
    adapter: SparseLoRA
    profile: TimestepProfile | None
    saliency: Saliency
    selected_modules: list[str]
    history: TrainingHistory
    seconds: dict[str, float]


def _generate_latents(
    backend: DiffusionBackend, prompts: list[str], per_prompt: int, seed: int, config: ErasureConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images the frozen model draws for ``prompts`` (``per_prompt`` each), as latents, with prompt indices."""
    index = [i for i in range(len(prompts)) for _ in range(per_prompt)]
    seeds = [seed + k for k in range(len(index))]
    images = backend.sample([prompts[i] for i in index], seeds, config.sample_steps, config.sample_guidance)
    return backend.encode_images(images).float().cpu(), torch.tensor(index)


def _cache_key(kind: str, prompts: list[str], per_prompt: int, seed: int, config: ErasureConfig) -> str:
    text = "\n".join(
        [
            kind,
            config.base_model,
            str(per_prompt),
            str(seed),
            str(config.sample_steps),
            str(config.sample_guidance),
            *prompts,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_latents(
    backend: DiffusionBackend,
    kind: str,
    prompts: list[str],
    per_prompt: int,
    seed: int,
    config: ErasureConfig,
    cache_dir: Path | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate a forget/retain set once and keep it in ``cache_dir`` (keyed by everything that shapes it)."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{kind}-{_cache_key(kind, prompts, per_prompt, seed, config)}.safetensors"
        if path.exists():
            data = load_file(path)
            return data["latents"], data["prompt_index"]
    latents, index = _generate_latents(backend, prompts, per_prompt, seed, config)
    if path is not None:
        save_safetensors({"latents": latents, "prompt_index": index}, path)
    return latents, index


def folder_latents(backend: DiffusionBackend, folder: str, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The user's images in ``folder`` as latents, paired with ``prompts`` in turn."""
    images = load_image_folder(folder, backend.image_size)
    latents = torch.cat([backend.encode_images(chunk).float().cpu() for chunk in images.split(16)])
    logger.info("read %d images from %s", len(latents), folder)
    return latents, round_robin_index(len(latents), len(prompts))


#: Where each set's seeds start, after DATA_SEED_BASE + seed * 10_000 (fixed: caches and the bench rely on them).
SET_SEED_OFFSETS = {"forget": 0, "surrogate": 2_500, "retain": 5_000}


def build_training_data(
    backend: DiffusionBackend, config: ErasureConfig, prompts: PromptSet, cache_dir: Path | None = None
) -> TrainingData:
    def image_set(kind: str, prompt_list: list[str], per_prompt: int, folder: str | None = None):
        if folder is not None:
            return folder_latents(backend, folder, prompt_list)
        seed = DATA_SEED_BASE + config.seed * 10_000 + SET_SEED_OFFSETS[kind]
        return cached_latents(backend, kind, prompt_list, per_prompt, seed, config, cache_dir)

    forget_latents, forget_index = image_set(
        "forget", prompts.forget, config.images_per_prompt, config.forget_image_dir
    )
    surrogate_latents, surrogate_index = None, None
    if config.surrogate_images_per_prompt > 0:
        surrogate_latents, surrogate_index = image_set(
            "surrogate", prompts.surrogate, config.surrogate_images_per_prompt
        )
    per_retain = max(1, -(-config.retain_images // len(prompts.retain)))
    retain_latents, retain_index = image_set("retain", prompts.retain, per_retain, config.retain_image_dir)
    return TrainingData(
        forget_latents=forget_latents,
        forget_prompt_index=forget_index,
        concept_cond=backend.encode_prompts(prompts.forget).detached_clone(),
        surrogate_cond=backend.encode_prompts(prompts.surrogate).detached_clone(),
        retain_latents=retain_latents,
        retain_prompt_index=retain_index,
        retain_cond=backend.encode_prompts(prompts.retain).detached_clone(),
        surrogate_latents=surrogate_latents,
        surrogate_prompt_index=surrogate_index,
    )


def _contrast_prompts(config: ErasureConfig, prompts: PromptSet, toy: bool) -> tuple[str, str] | None:
    """Two other concepts of the same domain, in the first forget prompt's wording."""
    if not config.profile_contrast or not toy:
        return None
    from .prompts import swap_concept
    from .toy import world

    concept = config.concepts[0].concept
    pool = world.STYLES if concept in world.STYLES else world.OBJECTS
    others = [c for c in pool if c not in {p.concept for p in config.concepts} | {p.surrogate for p in config.concepts}]
    if len(others) < 2:
        return None
    base = prompts.forget[0]
    return swap_concept(base, concept, others[0]), swap_concept(base, concept, others[1])


def build_profile(
    backend: DiffusionBackend, config: ErasureConfig, prompts: PromptSet, data: TrainingData, toy: bool
) -> TimestepProfile:
    """The timestep profile of the first concept pair (its first forget prompt), on the forget latents."""
    first = [i for i, c in enumerate(prompts.concept_of) if c == 0][0]
    latents = data.forget_latents[data.forget_prompt_index == first]
    if len(latents) == 0:
        latents = data.forget_latents[:8]
    return compute_profile(
        backend,
        latents,
        prompts.forget[first],
        prompts.surrogate[first],
        contrast_prompts=_contrast_prompts(config, prompts, toy),
        grid=default_grid(backend.num_train_timesteps, config.profile_points),
        gamma=config.profile_gamma,
        floor=config.profile_floor,
        seed=config.seed,
    )


def concept_saliency(
    backend: DiffusionBackend,
    config: ErasureConfig,
    prompts: PromptSet,
    data: TrainingData,
    sampler: TimestepSampler,
) -> tuple[Saliency, list[str]]:
    """Saliency of each concept on its own forget prompts, and the union of each concept's top modules.

    One saliency over all concepts together let one concept's modules crowd out
    the other's (measured on the toy model: a style and an object erased
    together, the object was not erased), so each concept gets its own top-k.
    The returned saliency holds, per module, the largest score any concept
    gave it (each concept's scores scaled to a maximum of 1).
    """
    per_concept = []
    for i, pair in enumerate(config.concepts):
        mine = [j for j, c in enumerate(prompts.concept_of) if c == i]
        keep = torch.isin(data.forget_prompt_index, torch.tensor(mine))
        remap = {old: new for new, old in enumerate(mine)}
        index = torch.tensor([remap[int(k)] for k in data.forget_prompt_index[keep]])
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
            )
        )
    modules: list[str] = []
    for saliency in per_concept:
        for name in saliency.select_modules(fraction=config.module_fraction, top_k=config.top_k):
            if name not in modules:
                modules.append(name)
    if len(per_concept) == 1:
        return per_concept[0], modules
    merged_scores, merged_channels = {}, {}
    for name in per_concept[0].module_scores:
        merged_scores[name] = max(s.module_scores[name] / (max(s.module_scores.values()) or 1.0) for s in per_concept)
        channels = torch.stack([torch.tensor(s.channel_scores[name]) for s in per_concept])
        merged_channels[name] = (channels / channels.amax(dim=1, keepdim=True).clamp_min(1e-30)).amax(0).tolist()
    concepts = ", ".join(p.concept for p in config.concepts)
    return Saliency(config.saliency_mode, merged_scores, merged_channels, concepts), modules


def erase(
    backend: DiffusionBackend,
    config: ErasureConfig,
    progress: Callable[[StepReport], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    cache_dir: Path | None = None,
    checkpoint_path: Path | None = None,
    stage: Callable[[str], None] | None = None,
    checkpoint_every: int = 50,
) -> ErasureResult:
    """Run a whole erasure on ``backend`` and return the trained adapter and everything measured on the way."""
    config.validate()
    toy = backend.arch == "toy"
    seconds: dict[str, float] = {}

    def timed(name: str, fn):
        if stage is not None:
            stage(name)
        start = time.perf_counter()
        value = fn()
        seconds[name] = round(time.perf_counter() - start, 2)
        return value

    prompts = build_prompt_set(config, toy)
    data = timed("data", lambda: build_training_data(backend, config, prompts, cache_dir))
    profile = None
    sampler = TimestepSampler.uniform(backend.num_train_timesteps)
    if config.timestep_mode == "profile":
        profile = timed("profile", lambda: build_profile(backend, config, prompts, data, toy))
        sampler = TimestepSampler.from_profile(profile)
    saliency, modules = timed("saliency", lambda: concept_saliency(backend, config, prompts, data, sampler))
    masks = saliency.row_masks(modules, config.channel_fraction) if config.channel_fraction < 1 else None
    adapter = SparseLoRA(backend.denoiser(), modules, config.rank, config.alpha, masks, seed=config.seed)
    trainer = SelfDistillationTrainer(backend, adapter, data, sampler, config)
    history = timed("train", lambda: trainer.run(progress, cancel, checkpoint_path, checkpoint_every))
    return ErasureResult(config, prompts, adapter, profile, saliency, modules, history, seconds)
