"""The erasure configuration as stored in LoRA files: exact round trip, newer and older files."""

import json

import pytest

from spare_core.config import ConceptPair, ErasureConfig


def _config(**kw) -> ErasureConfig:
    return ErasureConfig(concepts=[ConceptPair("red", "plain"), ConceptPair("circle", "square")], **kw)


def test_round_trip_keeps_every_setting():
    config = _config(steps=33, eta=0.5, surrogate_images_per_prompt=3, forget_image_dir="/data/red")
    assert ErasureConfig.from_json(config.to_json()) == config


def test_a_setting_from_a_newer_spare_is_refused():
    data = json.loads(_config().to_json())
    data["warp_factor"] = 9
    with pytest.raises(ValueError, match="newer SPARE"):
        ErasureConfig.from_json(json.dumps(data))


def test_a_file_from_before_surrogate_images_reruns_without_them():
    data = json.loads(_config().to_json())
    del data["surrogate_images_per_prompt"]
    assert _config().surrogate_images_per_prompt > 0  # today's default
    assert ErasureConfig.from_json(json.dumps(data)).surrogate_images_per_prompt == 0
