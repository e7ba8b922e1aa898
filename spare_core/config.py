"""The settings of an erasure, declared once: default, range or choices, help, and whether it is advanced.

This module is a leaf: it imports nothing from the engine and not torch, so
every layer (algorithm modules, CLI, ComfyUI nodes, app) may import it. The
command-line options, the node inputs and the app's widgets are generated from
:data:`SETTINGS`; an :class:`ErasureConfig` holds one value per setting and is
stored in every LoRA file, so that a result can be traced and re-run.

Types are limited to what a node widget and a form can show: int, float, str,
bool, a choice among strings, and a list of strings. "Off" is an explicit
value (``0``, ``""`` or an empty list), never ``None``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

#: What saliency measures (see :mod:`spare_core.saliency`).
SALIENCY_MODES = ("denoise", "forget", "forget_over_retain")
#: Which modules saliency may choose from (see :func:`spare_core.saliency.candidate_modules`).
MODULE_SCOPES = ("all", "attention", "cross_attention", "text")
#: How training timesteps are drawn.
TIMESTEP_MODES = ("profile", "uniform")
#: How the retain term's timesteps are drawn.
RETAIN_TIMESTEP_MODES = ("uniform", "forget")
#: Prediction types a user may force ("" = what the model itself says; see ``ErasureConfig.prediction``).
PREDICTION_TYPES = ("", "eps", "v")
#: Image files read from a user's folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

#: Settings added after files were first written, with the value that reproduces
#: those older files' runs (``spare erase --from`` on an older LoRA).
SETTINGS_BEFORE_THEY_EXISTED: dict[str, object] = {
    "surrogate_images_per_prompt": 0,
    "robust": 0.0,
    "retain_focus": 0.0,
    "preserve_weight": 0.0,
    "retain_focus_surrogate": False,
    "retain_timesteps": "uniform",
}


class SettingsError(ValueError):
    """A setting has a value it cannot take; the message says what to change."""


@dataclass(frozen=True)
class Setting:
    """One erasure setting as every front end shows it."""

    name: str
    kind: str  # "int", "float", "str", "bool", "choice" or "list"
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    advanced: bool = False
    group: str = "training"
    aliases: tuple[str, ...] = ()  # extra command-line spellings, e.g. "--scope"

    @property
    def option(self) -> str:
        """The command-line option: the setting's name with dashes (``top_k`` -> ``--top-k``)."""
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(c if c else '""' for c in self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"{_number(self.minimum)} to {_number(self.maximum)}"
        if self.minimum is not None:
            return f"at least {_number(self.minimum)}"
        return ""

    def check(self, value: Any) -> Any:
        """``value`` converted to this setting's type; SettingsError if it does not fit."""
        label = self.name
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise SettingsError(f"{label} must be true or false, got {value!r}")
            return value
        if self.kind == "list":
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise SettingsError(f"{label} must be a list of texts, got {value!r}")
            if not all(isinstance(v, str) and v.strip() for v in value):
                raise SettingsError(f"{label} holds an empty or non-text entry: {list(value)!r}")
            return list(value)
        if self.kind in ("str", "choice"):
            if not isinstance(value, str):
                raise SettingsError(f"{label} must be a text, got {value!r}")
            if self.kind == "choice" and value not in self.choices:
                raise SettingsError(f"unknown {label} {value!r}; use one of {', '.join(self.choices)}")
            return value
        number_type = int if self.kind == "int" else float
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{label} must be a number, got {value!r}")
        if number_type is int and float(value) != int(value):
            raise SettingsError(f"{label} must be a whole number, got {value!r}")
        value = number_type(value)
        if not math.isfinite(value):
            raise SettingsError(f"{label} must be a finite number, got {value}")
        if self.minimum is not None and value < self.minimum:
            raise SettingsError(f"{label} must be {self.range_text()}, got {_number(value)}")
        if self.maximum is not None and value > self.maximum:
            raise SettingsError(f"{label} must be {self.range_text()}, got {_number(value)}")
        return value


def _number(value: float) -> str:
    """A bound as people write it: whole numbers in full (2147483647, not 2.14748e+09)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _setting(default: Any, kind: str, help: str, **kw: Any) -> Any:
    """A dataclass field that carries its :class:`Setting` description in its metadata."""
    factory = (lambda d=default: list(d)) if kind == "list" else None
    meta = {"setting": dict(kind=kind, default=default, help=help, **kw)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ConceptPair:
    """Erase ``concept``; the model should draw ``surrogate`` instead."""

    concept: str
    surrogate: str


def pair_concepts(concepts: list[str], surrogates: list[str]) -> list[ConceptPair]:
    """Concepts with their surrogates in the same order, or one surrogate for all; SettingsError otherwise."""
    concepts, surrogates = list(concepts), list(surrogates)
    if not concepts:
        raise SettingsError("no concept given: name what to erase")
    if not surrogates:
        raise SettingsError("no surrogate given: name what the model should draw instead")
    if len(surrogates) == 1:
        surrogates = surrogates * len(concepts)
    if len(surrogates) != len(concepts):
        raise SettingsError(
            f"{len(concepts)} concepts but {len(surrogates)} surrogates: give one surrogate, or one per concept"
        )
    return [ConceptPair(c, s) for c, s in zip(concepts, surrogates, strict=True)]


@dataclass
class ErasureConfig:
    """Everything that decides an erasure's result (with the base model and seed).

    ``concepts`` and ``base_model`` are given by the front end (the concept and
    surrogate inputs, the opened model); every other field is a setting.
    """

    concepts: list[ConceptPair]
    base_model: str = "toy"
    # ---------------------------------------------------------------- model
    resolution: int = _setting(
        0,
        "int",
        "pixel size (square side) of the generated sets and of the training images: lower it to save time and "
        "memory, e.g. SDXL at 768 or SD 1.5 at 384; it must be a multiple of what the model's VAE and UNet "
        "downsample by (64 for SD, 32 for SDXL) (0: the model's native size)",
        minimum=0,
        maximum=4096,
        group="model",
    )
    prediction: str = _setting(
        "",
        "choice",
        "what the model predicts, for checkpoints whose type cannot be detected (SD 2.x 768-v models saved "
        "without their scheduler config): eps (the noise) or v (v-prediction) (empty: what the model says)",
        choices=PREDICTION_TYPES,
        advanced=True,
        group="model",
    )
    # ---------------------------------------------------------------- data
    forget_prompts: list[str] = _setting(
        (),
        "list",
        "prompts that name the concept, each containing the concept's word "
        "(automatic: the model's own set for each concept)",
        group="data",
        aliases=("--forget-prompt",),
    )
    retain_prompts: list[str] = _setting(
        (), "list", "prompts whose images must not change", group="data", aliases=("--retain-prompt",)
    )
    forget_image_dir: str = _setting(
        "",
        "str",
        "a folder of your own images of the concept (PNG/JPEG, cropped to a square) used instead of generated "
        "ones; image i goes with forget prompt i mod n (empty: generate)",
        group="data",
    )
    retain_image_dir: str = _setting(
        "",
        "str",
        "a folder of your own images of what must not change, used instead of generated ones; "
        "image i goes with retain prompt i mod n (empty: generate)",
        group="data",
    )
    images_per_prompt: int = _setting(
        2, "int", "forget images generated per prompt", minimum=1, maximum=64, group="data"
    )
    surrogate_images_per_prompt: int = _setting(
        2,
        "int",
        "images of each surrogate prompt added to the forget pool, so that the erased model also agrees with the "
        "surrogate where its own sampling goes (0: off)",
        minimum=0,
        maximum=64,
        group="data",
    )
    retain_images: int = _setting(
        64,
        "int",
        "retain images generated in all, rounded up to the same whole number for every retain prompt "
        "(64 over 45 retain prompts draws 90)",
        minimum=1,
        maximum=4096,
        group="data",
    )
    sample_steps: int = _setting(
        10, "int", "sampling steps for the generated sets", minimum=1, maximum=200, advanced=True, group="data"
    )
    sample_guidance: float = _setting(
        5.0,
        "float",
        "classifier-free guidance of the generated sets",
        minimum=0.0,
        maximum=50.0,
        advanced=True,
        group="data",
    )
    generation_batch_size: int = _setting(
        16,
        "int",
        "images drawn per sampling call while generating the sets (lower it if memory runs out)",
        minimum=1,
        maximum=256,
        advanced=True,
        group="data",
    )
    # ---------------------------------------------------------------- saliency
    saliency_mode: str = _setting(
        "forget_over_retain",
        "choice",
        "what saliency measures: the plain denoising loss on forget images (denoise), the erasure objective "
        "(forget), or the erasure objective relative to retain images (forget_over_retain)",
        choices=SALIENCY_MODES,
        group="saliency",
    )
    module_scope: str = _setting(
        "attention",
        "choice",
        "modules saliency may choose from: every Linear/Conv (all), attention projections, cross-attention "
        "projections, or the cross-attention keys and values that read the prompt (text)",
        choices=MODULE_SCOPES,
        group="saliency",
        aliases=("--scope",),
    )
    top_k: int = _setting(
        24,
        "int",
        "number of modules that carry the LoRA (0: use module_fraction instead)",
        minimum=0,
        maximum=10_000,
        group="saliency",
    )
    module_fraction: float = _setting(
        0.0,
        "float",
        "share of the candidate modules that carry the LoRA, used when top_k is 0",
        minimum=0.0,
        maximum=1.0,
        advanced=True,
        group="saliency",
    )
    channel_fraction: float = _setting(
        1.0,
        "float",
        "share of output channels trained in each chosen module (a row mask that still exports as a plain LoRA)",
        minimum=0.001,
        maximum=1.0,
        advanced=True,
        group="saliency",
    )
    saliency_batches: int = _setting(
        4, "int", "batches of gradients summed for saliency", minimum=1, maximum=1000, advanced=True, group="saliency"
    )
    # ---------------------------------------------------------------- timesteps
    timestep_mode: str = _setting(
        "profile",
        "choice",
        "how training timesteps are drawn: from the concept's timestep profile, or uniformly",
        choices=TIMESTEP_MODES,
        group="timesteps",
        aliases=("--timesteps",),
    )
    profile_points: int = _setting(
        20,
        "int",
        "timesteps at which the profile is measured",
        minimum=2,
        maximum=1000,
        advanced=True,
        group="timesteps",
    )
    profile_gamma: float = _setting(
        1.0,
        "float",
        "sharpness of the timestep distribution, p(t) ~ d(t)^gamma",
        minimum=0.0,
        maximum=10.0,
        advanced=True,
        group="timesteps",
        aliases=("--gamma",),
    )
    profile_floor: float = _setting(
        0.5,
        "float",
        "uniform share mixed into p(t)",
        minimum=0.0,
        maximum=1.0,
        advanced=True,
        group="timesteps",
        aliases=("--floor",),
    )
    profile_contrast: bool = _setting(
        True,
        "bool",
        "divide the profile by how much two other concepts differ at each timestep, so it shows what is "
        "specific to this concept",
        advanced=True,
        group="timesteps",
    )
    # ---------------------------------------------------------------- training
    rank: int = _setting(4, "int", "LoRA rank: the inner dimension of each low-rank update", minimum=1, maximum=256)
    alpha: float = _setting(4.0, "float", "LoRA alpha; the update is scaled by alpha / rank", minimum=1e-6, maximum=1e4)
    steps: int = _setting(120, "int", "optimisation steps of the LoRA", minimum=1, maximum=100_000)
    batch_size: int = _setting(8, "int", "training batch size (forget and retain images each)", minimum=1, maximum=512)
    lr: float = _setting(6e-3, "float", "AdamW learning rate (cosine schedule)", minimum=1e-8, maximum=1e4)
    weight_decay: float = _setting(0.0, "float", "AdamW weight decay", minimum=0.0, maximum=1.0, advanced=True)
    grad_clip: float = _setting(
        1.0, "float", "gradient norm clipping (0: off)", minimum=0.0, maximum=1e6, advanced=True
    )
    gradient_checkpointing: bool = _setting(
        False,
        "bool",
        "recompute the UNet's activations in the backward pass: less memory for about a third more time per "
        "step, the same result (diffusers models; SDXL at full size on a small GPU)",
        advanced=True,
    )
    eta: float = _setting(
        1.0,
        "float",
        "surrogate guidance of the forget target; 0 is pure self-distillation toward the surrogate",
        minimum=0.0,
        maximum=10.0,
    )
    robust: float = _setting(
        0.0,
        "float",
        "robust mode: also erase the concept when its prompt's text states are pushed, within this share of "
        "their RMS, toward bringing it back (adversarial states found at every step); against synonyms, "
        "rephrasings and learned words, at up to twice the training time (0: off)",
        minimum=0.0,
        maximum=2.0,
    )
    forget_weight: float = _setting(1.0, "float", "weight of the forget term", minimum=0.0, maximum=1e3, advanced=True)
    retain_weight: float = _setting(2.0, "float", "weight of the retain term", minimum=0.0, maximum=1e3, advanced=True)
    retain_focus: float = _setting(
        0.8,
        "float",
        "share of retain draws given to the retain prompts nearest the concept in the text encoder's states "
        "(its neighbours and the surrogate, which an erasure most easily drags along); 0: uniform",
        minimum=0.0,
        maximum=1.0,
        advanced=True,
    )
    retain_focus_surrogate: bool = _setting(
        True,
        "bool",
        "the retain focus also favours the retain prompts nearest the surrogate (an object erased toward a "
        "surrogate otherwise tends to lose some of the surrogate's own prompts to the erasure)",
        advanced=True,
    )
    retain_timesteps: str = _setting(
        "forget",
        "choice",
        "how the retain term's timesteps are drawn: as the forget term's are (from the concept's timestep "
        "profile), which holds the retained prompts where the erasure acts, or uniformly",
        choices=RETAIN_TIMESTEP_MODES,
        advanced=True,
    )
    preserve_weight: float = _setting(
        0.0,
        "float",
        "weight of the text-state preservation term: the adapter's change to what the prompt-reading modules "
        "compute from the retain and surrogate prompts' token states, relative to their own output (UCE's "
        "preservation term as a penalty; costs no model pass); 0: off",
        minimum=0.0,
        maximum=1e4,
        advanced=True,
    )
    seed: int = _setting(0, "int", "seed of every random draw", minimum=0, maximum=2**31 - 1)

    # ---------------------------------------------------------------- checks and storage

    def validate(self) -> ErasureConfig:
        """Check every value; raise SettingsError with a message that says what to change."""
        if not self.concepts:
            raise SettingsError("no concept to erase: give at least one concept")
        for pair in self.concepts:
            if not pair.concept.strip():
                raise SettingsError("the concept is empty: name what to erase")
            if not pair.surrogate.strip():
                raise SettingsError(f"the surrogate for {pair.concept!r} is empty: name what to draw instead")
            if pair.concept.strip().lower() == pair.surrogate.strip().lower():
                raise SettingsError(
                    f"the concept and its surrogate are both {pair.concept!r}; choose another surrogate"
                )
        for setting in SETTINGS:
            setattr(self, setting.name, setting.check(getattr(self, setting.name)))
        if self.top_k == 0 and self.module_fraction == 0:
            raise SettingsError("give top_k or module_fraction to choose how many modules carry the adapter")
        for name in ("forget_image_dir", "retain_image_dir"):
            folder = getattr(self, name)
            if folder:
                _check_image_folder(folder)
        return self

    def settings(self) -> dict[str, Any]:
        """The value of every setting, by name (what front ends show and override)."""
        return {s.name: getattr(self, s.name) for s in SETTINGS}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ErasureConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"stored erasure settings are not valid JSON ({exc})") from None
        known = {f.name for f in fields(cls)}
        data.pop("extra", None)  # an empty field of early files
        unknown = set(data) - known
        if unknown:
            raise SettingsError(f"unknown erasure settings {sorted(unknown)}: written by a newer SPARE?")
        data["concepts"] = [ConceptPair(**c) for c in data.get("concepts", [])]
        # Early files wrote None where today an explicit "off" value is stored.
        for setting in SETTINGS:
            if setting.name in data and data[setting.name] is None:
                data[setting.name] = _OFF[setting.kind]
        # A file written before a setting existed ran with that setting's old behaviour.
        for name, value in SETTINGS_BEFORE_THEY_EXISTED.items():
            data.setdefault(name, value)
        return cls(**data)

    def with_settings(self, **overrides: Any) -> ErasureConfig:
        """A copy with some settings replaced (names checked; values checked by :meth:`validate`)."""
        unknown = set(overrides) - set(SETTINGS_BY_NAME)
        if unknown:
            raise SettingsError(f"unknown settings {sorted(unknown)}; see the list of settings")
        data = asdict(self)
        data.update(overrides)
        data["concepts"] = [ConceptPair(**c) for c in data["concepts"]]
        return ErasureConfig(**data)


_OFF = {"int": 0, "float": 0.0, "str": "", "bool": False, "choice": "", "list": []}


def _check_image_folder(folder: str) -> None:
    path = Path(folder)
    if not path.is_dir():
        raise SettingsError(f"image folder {folder} not found: give a folder of PNG or JPEG images")
    if not any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        raise SettingsError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): add some")


def _collect_settings() -> tuple[Setting, ...]:
    out = []
    for f in fields(ErasureConfig):
        if "setting" in f.metadata:
            spec = dict(f.metadata["setting"])
            if spec["kind"] == "list":
                spec["default"] = list(spec["default"])
            out.append(Setting(name=f.name, **spec))
    return tuple(out)


#: Every setting in declaration order: the one schema the CLI, the nodes and the app are generated from.
SETTINGS: tuple[Setting, ...] = _collect_settings()
SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
