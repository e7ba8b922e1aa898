"""The settings schema: one declaration per setting, types a form can show, values checked before work starts."""

import json
import math

import pytest

from spare_core import SETTINGS, ConceptPair, ErasureConfig, SettingsError
from spare_core.config import MODULE_SCOPES, SALIENCY_MODES, SETTINGS_BY_NAME, TIMESTEP_MODES

KINDS = {"int", "float", "str", "bool", "choice", "list"}


def test_every_setting_is_described_and_its_default_is_valid():
    defaults = ErasureConfig(concepts=[ConceptPair("red", "plain")]).validate()
    assert len(SETTINGS) >= 25
    for s in SETTINGS:
        assert s.kind in KINDS, s
        assert len(s.help) > 15, s.name
        assert s.default is not None, f"{s.name}: 'off' must be an explicit value, not None"
        assert s.check(s.default) == s.default
        assert getattr(defaults, s.name) == s.default
        if s.kind == "choice":
            assert s.default in s.choices


def test_choices_come_from_the_engine_constants():
    assert SETTINGS_BY_NAME["saliency_mode"].choices == SALIENCY_MODES
    assert SETTINGS_BY_NAME["module_scope"].choices == MODULE_SCOPES
    assert SETTINGS_BY_NAME["timestep_mode"].choices == TIMESTEP_MODES


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("lr", math.nan, "finite"),
        ("lr", math.inf, "finite"),
        ("lr", -1.0, "lr must be"),
        ("steps", 2.5, "whole number"),
        ("steps", True, "must be a number"),
        ("eta", "1", "must be a number"),
        ("module_scope", "everything", "unknown module_scope"),
        ("forget_prompts", "a red circle", "list of texts"),
        ("forget_prompts", ["ok", " "], "empty"),
        ("profile_contrast", 1, "true or false"),
    ],
)
def test_bad_values_are_refused_with_what_to_change(name, value, message):
    config = ErasureConfig(concepts=[ConceptPair("red", "plain")]).with_settings(**{name: value})
    with pytest.raises(SettingsError, match=message):
        config.validate()


def test_unknown_setting_names_are_refused():
    with pytest.raises(SettingsError, match="unknown settings"):
        ErasureConfig(concepts=[]).with_settings(warp_factor=9)


def test_files_written_with_none_for_off_still_load():
    stored = json.loads(ErasureConfig(concepts=[ConceptPair("red", "plain")]).to_json())
    stored.update(top_k=None, module_fraction=None, forget_prompts=None, forget_image_dir=None, extra={})
    config = ErasureConfig.from_json(json.dumps(stored))
    assert (config.top_k, config.module_fraction, config.forget_prompts, config.forget_image_dir) == (0, 0.0, [], "")
