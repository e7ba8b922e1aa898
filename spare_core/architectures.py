"""The one registry of model architectures: what each is called and how its LoRA files are written.

A backend reports one of these keys (``backend.arch``). LoRA metadata and key
spelling come from here; the real-checkpoint loaders add their architectures
with :func:`register_architecture`.

- ``naming``: the module spelling kohya sd-scripts writes for the architecture
  (``diffusers`` paths for SD 1.x/2.x, ``compvis`` paths for SDXL), which every
  host is tested against.
- ``base_model_version``: kohya's ``ss_base_model_version`` (sd-scripts
  ``library/train_util.py`` / ``sdxl_train_util.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

NAMINGS = ("diffusers", "compvis")


@dataclass(frozen=True)
class Architecture:
    key: str
    display_name: str
    base_model_version: str
    naming: str
    version_prefix: str  # what every ss_base_model_version of the family starts with
    v2: bool = False  # kohya's ss_v2 flag

    def __post_init__(self) -> None:
        if self.naming not in NAMINGS:
            raise ValueError(f"naming must be one of {NAMINGS}, got {self.naming!r}")


_REGISTRY: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    """Add (or replace) an architecture; returns it."""
    _REGISTRY[arch.key] = arch
    return arch


def get_architecture(key: str) -> Architecture:
    try:
        return _REGISTRY[key]
    except KeyError:
        raise ValueError(f"unknown architecture {key!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def architecture_from_metadata(base_model_version: str) -> Architecture | None:
    """The architecture a kohya ``ss_base_model_version`` names (matched by its family prefix), if any."""
    for arch in sorted(_REGISTRY.values(), key=lambda a: -len(a.version_prefix)):
        if base_model_version.startswith(arch.version_prefix):
            return arch
    return None


register_architecture(Architecture("sd1", "Stable Diffusion 1.x", "sd_v1", "diffusers", "sd_v1"))
register_architecture(Architecture("sd2", "Stable Diffusion 2.x", "sd_v2", "diffusers", "sd_v2", v2=True))
register_architecture(Architecture("sdxl", "SDXL", "sdxl_base_v1-0", "compvis", "sdxl"))
register_architecture(Architecture("toy", "the SPARE toy model", "spare_toy", "diffusers", "spare_toy"))
