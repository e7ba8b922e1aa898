"""One serialisable configuration for an erasure: stored in the LoRA file so a result can be traced and re-run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from .image_folder import image_files
from .saliency import MODULE_SCOPES, SALIENCY_MODES

TIMESTEP_MODES = ("profile", "uniform")

#: Settings added after files were first written, with the value that reproduces
#: those older files' runs (``spare erase --from`` on an older LoRA).
SETTINGS_BEFORE_THEY_EXISTED: dict[str, object] = {"surrogate_images_per_prompt": 0}


@dataclass
class ConceptPair:
    """Erase ``concept``; the model should draw ``surrogate`` instead."""

    concept: str
    surrogate: str


@dataclass
class ErasureConfig:
    """Everything that decides an erasure's result (with the base model and seed)."""

    concepts: list[ConceptPair]
    base_model: str = "toy"
    # Forget / retain sets: images the frozen model generates for these prompts
    # (None: the automatic prompt sets of spare_core.prompts).
    forget_prompts: list[str] | None = None
    retain_prompts: list[str] | None = None
    # Folders of the user's own images instead of generated ones (None: generate);
    # each image is paired with the set's prompts in turn (spare_core.image_folder).
    forget_image_dir: str | None = None
    retain_image_dir: str | None = None
    images_per_prompt: int = 2
    # Images of each surrogate prompt added to the forget pool: the student then
    # also learns the surrogate's prediction on the latents its own sampling
    # passes through once it draws the surrogate (0: concept images only).
    surrogate_images_per_prompt: int = 2
    retain_images: int = 64
    sample_steps: int = 10
    sample_guidance: float = 5.0
    # The defaults below were chosen on the quick set (red, stripes, circle, cross)
    # and the worst concepts of an earlier full run, and are measured on all 12
    # toy concepts with every variant in bench/results/erasure.json: mean UA
    # 0.997, IRA 1.5 and CRA 0.3 points below base, surrogate rate 0.93, median
    # erase 53 s, LoRA 22 KiB. Within the text scope the plain denoising saliency
    # (the SPARE paper's) does as well as forget_over_retain; surrogate images in
    # the forget pool lifted the surrogate rate from 0.88 (that file at commit
    # 773ff94, row saliency=denoise) to 0.93.
    # Saliency: which modules carry the adapter.
    saliency_mode: str = "denoise"
    module_scope: str = "text"
    top_k: int | None = 12
    module_fraction: float | None = None
    channel_fraction: float = 1.0  # < 1: structured row mask inside each selected module
    saliency_batches: int = 4
    # Timestep targeting.
    timestep_mode: str = "profile"
    profile_points: int = 20
    profile_gamma: float = 1.0
    profile_floor: float = 0.2
    profile_contrast: bool = True
    # Adapter and training.
    rank: int = 4
    alpha: float = 4.0
    steps: int = 120
    batch_size: int = 8
    lr: float = 6e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eta: float = 1.0  # surrogate guidance in the forget target (0: pure self-distillation)
    forget_weight: float = 1.0
    retain_weight: float = 1.0
    seed: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def validate(self) -> ErasureConfig:
        """Raise ValueError with a message that says what to change."""
        if not self.concepts:
            raise ValueError("no concept to erase: give at least one concept")
        for pair in self.concepts:
            if not pair.concept.strip():
                raise ValueError("the concept is empty: name what to erase")
            if not pair.surrogate.strip():
                raise ValueError(f"the surrogate for {pair.concept!r} is empty: name what to draw instead")
            if pair.concept.strip().lower() == pair.surrogate.strip().lower():
                raise ValueError(f"the concept and its surrogate are both {pair.concept!r}; choose another surrogate")
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.images_per_prompt < 1 or self.retain_images < 1:
            raise ValueError("images per prompt and retain images must be at least 1")
        if self.surrogate_images_per_prompt < 0:
            raise ValueError(f"surrogate images per prompt must be 0 or more, got {self.surrogate_images_per_prompt}")
        for folder in (self.forget_image_dir, self.retain_image_dir):
            if folder is not None:
                image_files(folder)  # raises with a message that says what to change
        if self.saliency_mode not in SALIENCY_MODES:
            raise ValueError(f"unknown saliency mode {self.saliency_mode!r}; use one of {', '.join(SALIENCY_MODES)}")
        if self.module_scope not in MODULE_SCOPES:
            raise ValueError(f"unknown module scope {self.module_scope!r}; use one of {', '.join(MODULE_SCOPES)}")
        if self.timestep_mode not in TIMESTEP_MODES:
            raise ValueError(f"unknown timestep mode {self.timestep_mode!r}; use profile or uniform")
        if self.top_k is None and self.module_fraction is None:
            raise ValueError("give top_k or module_fraction to choose how many modules carry the adapter")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.module_fraction is not None and not 0 < self.module_fraction <= 1:
            raise ValueError(f"module fraction must lie in (0, 1], got {self.module_fraction}")
        if not 0 < self.channel_fraction <= 1:
            raise ValueError(f"channel fraction must lie in (0, 1], got {self.channel_fraction}")
        if not 0 <= self.profile_floor <= 1:
            raise ValueError(f"profile floor must lie in [0, 1], got {self.profile_floor}")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ErasureConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown erasure settings {sorted(unknown)}: written by a newer SPARE?")
        data["concepts"] = [ConceptPair(**c) for c in data["concepts"]]
        # A file written before a setting existed ran with that setting's old behaviour.
        for name, value in SETTINGS_BEFORE_THEY_EXISTED.items():
            data.setdefault(name, value)
        return cls(**data)
