"""Node inputs generated from the engine's settings schema, and the settings read back from a node's inputs.

One declaration per setting lives in the engine (``SETTINGS``); this module
turns each into a ComfyUI V3 input with the same default, range, choices and
help, so the nodes never keep a second copy.
"""

from __future__ import annotations

import math
from typing import Any

from comfy_api.latest import io

from ._engine import engine

#: Settings the nodes take from their own inputs (the concepts, folders and prompts have dedicated inputs).
NOT_AS_WIDGETS = ("forget_prompts", "retain_prompts", "forget_image_dir", "retain_image_dir")


def _tooltip(setting) -> str:
    extra = f" ({setting.range_text()})" if setting.range_text() else ""
    return setting.help + extra + (" [advanced]" if setting.advanced else "")


def setting_input(setting, optional: bool = False) -> io.Input:
    """The V3 input of one engine setting; advanced ones carry ``advanced: true`` in the node definition.

    ComfyUI's front end copies that flag to the widget's options, and the pack's
    extension (``web/spare_training.js``) folds such widgets.
    """
    widget = _widget(setting, optional)
    if setting.advanced:
        widget.extra_dict["advanced"] = True
    return widget


def _widget(setting, optional: bool) -> io.Input:
    kw: dict[str, Any] = dict(optional=optional, tooltip=_tooltip(setting), default=setting.default)
    if setting.kind == "bool":
        return io.Boolean.Input(setting.name, **kw)
    if setting.kind == "choice":
        return io.Combo.Input(setting.name, options=list(setting.choices), **kw)
    if setting.kind == "int":
        return io.Int.Input(setting.name, min=int(setting.minimum), max=int(setting.maximum), **kw)
    if setting.kind == "float":
        return io.Float.Input(setting.name, min=setting.minimum, max=setting.maximum, step=_step(setting), **kw)
    if setting.kind == "list":
        kw["default"] = "\n".join(setting.default)
        return io.String.Input(setting.name, multiline=True, **kw)
    return io.String.Input(setting.name, **kw)


def _step(setting) -> float:
    """A widget step a tenth of the default's order of magnitude (a learning rate of 0.006 steps by 0.0001)."""
    default = abs(float(setting.default))
    return 10.0 ** (math.floor(math.log10(default)) - 1) if default > 0 else 0.01


def setting_inputs(names: tuple[str, ...] | None = None) -> list[io.Input]:
    """Inputs for the named settings (default: every setting a widget can hold), in schema order."""
    chosen = [s for s in engine.SETTINGS if s.name not in NOT_AS_WIDGETS and (names is None or s.name in names)]
    return [setting_input(s) for s in chosen]


def lines(text: str | None) -> list[str]:
    """The non-empty lines of a multiline field, stripped."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def concept_pairs(concepts: str, surrogates: str) -> list:
    """Concepts one per line, with their surrogates one per line in the same order (or one for all)."""
    return engine.pair_concepts(lines(concepts), lines(surrogates))


def config_from_inputs(concepts: str, surrogates: str, base_model: str, **inputs: Any):
    """A validated ``ErasureConfig`` from a node's inputs: every setting input given overrides its default."""
    overrides = {}
    for setting in engine.SETTINGS:
        if setting.name in inputs and inputs[setting.name] is not None:
            value = inputs[setting.name]
            overrides[setting.name] = lines(value) if setting.kind == "list" else value
    config = engine.ErasureConfig(concepts=concept_pairs(concepts, surrogates), base_model=base_model)
    return config.with_settings(**overrides).validate()
