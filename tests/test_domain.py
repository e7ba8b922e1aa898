"""Default prompts come from a domain: the toy world brings its own, real models get the generic one, users their own."""

import pytest
import torch

from spare_core import (
    ConceptPair,
    ErasureConfig,
    ErasureSets,
    GenericDomain,
    StageMismatch,
    erase,
    measure_profile,
    prepare_sets,
)
from spare_core.prompts import build_prompt_set


def _config(concept="cat", surrogate="dog", **kw) -> ErasureConfig:
    base = dict(
        images_per_prompt=1,
        surrogate_images_per_prompt=0,
        retain_images=2,
        sample_steps=1,
        profile_points=2,
        generation_batch_size=16,
    )
    base.update(kw)
    return ErasureConfig(concepts=[ConceptPair(concept, surrogate)], **base).validate()


def test_the_generic_domain_names_the_concept_and_spares_it_in_retain_prompts():
    config = _config("Claude Monet", "a painter")
    prompts = build_prompt_set(config, GenericDomain())
    assert all("Claude Monet" in p for p in prompts.forget)
    assert all("a painter" in p and "Claude Monet" not in p for p in prompts.surrogate)
    assert not any("Monet" in p for p in prompts.retain)
    assert prompts.contrast == ("a dog", "a house") or len(prompts.contrast) == 2
    assert prompts.contrast[0] != prompts.contrast[1]


def test_user_prompts_replace_the_domains():
    config = _config("red", "plain", forget_prompts=["a red ring", "red style star"], retain_prompts=["a blue ring"])
    prompts = build_prompt_set(config, GenericDomain())
    assert prompts.forget == ["a red ring", "red style star"]
    assert prompts.surrogate == ["a plain ring", "plain style star"]
    assert prompts.retain == ["a blue ring"]
    with pytest.raises(ValueError, match="none of the forget prompts contains"):
        build_prompt_set(_config("red", "plain", forget_prompts=["a blue ring"]), GenericDomain())


def test_the_toy_backend_brings_the_toy_world(toy_backend):
    prompts = build_prompt_set(_config("red", "plain"), toy_backend.domain)
    assert "a circle in red style" in prompts.forget
    assert prompts.contrast == ("a circle in blue style", "a circle in yellow style")
    with pytest.raises(ValueError, match="not a toy concept"):
        build_prompt_set(_config("dragon", "plain"), toy_backend.domain)


@pytest.mark.parametrize(("concept", "surrogate"), [("red", "plain"), ("checker", "plain"), ("star", "circle")])
def test_toy_forget_prompts_name_the_concept_by_its_own_word_only(concept, surrogate):
    from spare_core.toy.domain import ToyDomain
    from spare_core.toy.world import ALTERNATIVE_NAMES, concepts_named

    prompts = build_prompt_set(_config(concept, surrogate), ToyDomain())
    other_names = {name for names in ALTERNATIVE_NAMES.values() for name in names}
    for prompt in prompts.forget + prompts.retain + prompts.surrogate:
        padded = f" {prompt} "
        assert not any(f" {name} " in padded for name in other_names), prompt
    assert all(concept in p.split() and concept in concepts_named(p) for p in prompts.forget)


@pytest.mark.slow
def test_the_profile_contrast_works_on_a_real_model_shape(sd15_backend):
    config = _config(retain_prompts=["a photo of a dog on a beach"])
    sets = prepare_sets(sd15_backend, config)
    assert sd15_backend.domain is None and len(sets.prompts.forget) == 5  # the generic templates
    profile = measure_profile(sd15_backend, config, sets)
    # The contrast pair was measured (this fixture's word-level tokenizer reads both everyday subjects
    # as unknown words, so their divergence is ~0 and the ratio falls back on its floor: still finite).
    assert profile.contrast is not None and len(profile.contrast) == 2
    assert all(torch.isfinite(torch.tensor(profile.divergence + profile.contrast)))


def test_sets_save_and_load_and_stage_results_are_checked(toy_backend, tmp_path):
    config = _config("yellow", "plain", steps=2, saliency_batches=1, surrogate_images_per_prompt=1, retain_images=8)
    sets = prepare_sets(toy_backend, config)
    sets.save(tmp_path / "sets.safetensors")
    loaded = ErasureSets.load(tmp_path / "sets.safetensors", toy_backend)
    assert loaded.prompts == sets.prompts
    assert torch.equal(loaded.data.forget_latents, sets.data.forget_latents)
    assert torch.equal(loaded.data.surrogate_latents, sets.data.surrogate_latents)
    assert torch.equal(loaded.data.concept_cond.hidden_states, sets.data.concept_cond.hidden_states)
    a = erase(toy_backend, config, sets=sets)
    b = erase(toy_backend, config, sets=loaded)
    assert all(
        torch.equal(x.up, y.up) for x, y in zip(a.adapter.export().values(), b.adapter.export().values(), strict=True)
    )
    # A profile of another concept is refused.
    other = measure_profile(toy_backend, _config("blue", "plain"), prepare_sets(toy_backend, _config("blue", "plain")))
    with pytest.raises(StageMismatch, match="measure it again"):
        erase(toy_backend, config, sets=sets, profile=other)
