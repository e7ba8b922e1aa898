"""What the user types, checked and turned into engine values; no gradio here.

Every function raises ``ValueError`` (``SettingsError`` for settings) with a
message that says what to change; the page shows it as one line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spare_core import SETTINGS, ErasureConfig, SettingsError, pair_concepts

#: The seeds of the before/after galleries unless the user gives others.
DEFAULT_SEEDS = (11, 12, 13, 14)
#: Most seeds a gallery row shows (each is one generation per prompt and side).
MAX_SEEDS = 16
#: A file name the app writes: letters, digits, dot, dash and underscore, no folders.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def lines(text: str | None) -> list[str]:
    """The non-empty lines of a text box, stripped."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def names(text: str | None) -> list[str]:
    """Concept names separated by commas or line breaks."""
    return [part.strip() for part in re.split(r"[,\n]", text or "") if part.strip()]


def parse_seeds(text: str | None) -> list[int]:
    """Seeds separated by commas or spaces (``11, 12, 13, 14``)."""
    parts = [p for p in re.split(r"[,\s]+", text or "") if p]
    if not parts:
        raise ValueError("no seed given: enter seeds such as 11, 12, 13, 14")
    seeds = []
    for part in parts:
        if not part.isdigit():
            raise ValueError(f"seed {part!r} is not a whole number: enter seeds such as 11, 12, 13, 14")
        seeds.append(int(part))
    if len(seeds) > MAX_SEEDS:
        raise ValueError(f"{len(seeds)} seeds given: use at most {MAX_SEEDS}")
    if len(set(seeds)) != len(seeds):
        raise ValueError("a seed is given twice: give each seed once")
    return seeds


def safe_file_name(name: str | None, suffix: str = ".safetensors") -> str:
    """A file name inside the output folder: no folders, no leading dot; ``suffix`` added when missing."""
    name = (name or "").strip()
    if not name:
        raise ValueError(f"no file name given: enter a name such as spare_red{suffix}")
    if "/" in name or "\\" in name or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"file name {name!r} is not allowed: use letters, digits, '.', '-' and '_' only, without folders"
        )
    return name if name.lower().endswith(suffix) else name + suffix


def default_file_name(concepts: list[str]) -> str:
    """``spare_<concepts>.safetensors``, made of safe characters."""
    stem = "_".join(re.sub(r"[^A-Za-z0-9]+", "-", c).strip("-") for c in concepts) or "lora"
    return f"spare_{stem[:60]}.safetensors"


def setting_value(name: str, raw: Any) -> Any:
    """A widget's value as the setting's type: lists from lines, whole numbers as int."""
    setting = next(s for s in SETTINGS if s.name == name)
    if setting.kind == "list":
        return lines(raw) if isinstance(raw, str) else list(raw or [])
    if setting.kind == "int" and isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if setting.kind in ("int", "float") and raw is None:
        raise SettingsError(f"{name} is empty: enter a number ({setting.range_text()})")
    if setting.kind in ("str", "choice") and raw is None:
        return ""
    return raw


def build_config(
    concepts: str, surrogates: str, base_model: str, settings: Mapping[str, Any], default_retain: list[str]
) -> ErasureConfig:
    """The validated erasure settings of the form.

    Retain prompts equal to the model's own defaults (the prefilled text) are
    stored as "off" (the domain's defaults), as every other front end stores
    them, so that the same erasure writes the same LoRA file everywhere.
    """
    values = {name: setting_value(name, raw) for name, raw in settings.items()}
    if values.get("retain_prompts") == default_retain:
        values["retain_prompts"] = []
    config = ErasureConfig(concepts=pair_concepts(names(concepts), names(surrogates)), base_model=base_model)
    return config.with_settings(**values).validate()


def inside(folder: Path, path: Path) -> bool:
    """Whether ``path`` lies inside ``folder`` (after resolving links and ``..``)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())
