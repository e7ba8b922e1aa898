"""Concept inversion on the toy world: the placeholder word, what is learned, and the success count."""

from __future__ import annotations

from dataclasses import replace

import torch

from spare_core import proportion
from spare_core.toy.attacks import (
    PLACEHOLDER,
    InversionBudget,
    attack_success,
    concept_inversion,
    inversion_restart,
    learn_embedding,
    placeholder_embedding,
    strongest,
)
from spare_core.toy.text import UNK_ID

TINY = InversionBudget(images=4, steps=4, batch_size=4, image_seeds=(700,), attack_seeds=(800,), restarts=1)


def _word_embedding(backend, word: str) -> torch.Tensor:
    token = backend.pipe.tokenizer.convert_tokens_to_ids(word)
    assert token != UNK_ID
    return backend.pipe.text_encoder.get_input_embeddings().weight[token].detach().clone()


def test_the_placeholder_takes_the_meaning_of_the_embedding_it_is_given(toy_backend, toy_classifiers):
    assert toy_backend.pipe.tokenizer(PLACEHOLDER).input_ids[1] == UNK_ID
    red = attack_success(toy_backend, toy_classifiers, "red", _word_embedding(toy_backend, "red"), budget=TINY)
    blue = attack_success(toy_backend, toy_classifiers, "red", _word_embedding(toy_backend, "blue"), budget=TINY)
    assert red["n"] == 6 and red["value"] >= 5 / 6  # the word "red" in the placeholder's place draws red
    assert blue["value"] <= 1 / 6
    embedding = toy_backend.pipe.text_encoder.get_input_embeddings()
    assert not embedding._forward_hooks  # the hook is gone afterwards
    with placeholder_embedding(toy_backend.pipe.text_encoder, torch.zeros(embedding.weight.shape[1])):
        assert len(embedding._forward_hooks) == 1


def test_only_the_embedding_learns_and_the_erased_model_stays_frozen(toy_backend):
    from spare_core import WeightDelta

    edit = WeightDelta(toy_backend.denoiser(), ["conv_in"])
    unet_before = {k: v.clone() for k, v in toy_backend.denoiser().state_dict().items()}
    flags_before = [p.requires_grad for p in toy_backend.denoiser().parameters()]
    text_before = {k: v.clone() for k, v in toy_backend.pipe.text_encoder.state_dict().items()}
    start = toy_backend.pipe.text_encoder.get_input_embeddings().weight[UNK_ID].detach().clone()
    vector = learn_embedding(toy_backend, "circle", edit, TINY)
    assert vector.shape == start.shape and not torch.equal(vector, start)
    assert all(torch.equal(v, unet_before[k]) for k, v in toy_backend.denoiser().state_dict().items())
    assert all(torch.equal(v, text_before[k]) for k, v in toy_backend.pipe.text_encoder.state_dict().items())
    assert edit.deltas[0].grad is None and not edit.attached
    assert [p.requires_grad for p in toy_backend.denoiser().parameters()] == flags_before  # restored


def test_concept_inversion_reports_a_proportion_of_the_concepts_prompts(toy_backend, toy_classifiers):
    result = concept_inversion(toy_backend, toy_classifiers, "stripes", budget=TINY)
    assert result["n"] == 6 and 0 <= result["ci_low"] <= result["value"] <= result["ci_high"] <= 1


def test_the_strongest_restart_counts_and_restart_k_is_the_attack_seeded_k_later(toy_backend, toy_classifiers):
    best = strongest([proportion(3, 6), proportion(5, 6), proportion(1, 6)])
    assert best["k"] == 5 and best["restarts"] == [3, 5, 1] and best["ci_low"] == proportion(5, 6)["ci_low"]
    budget = replace(TINY, restarts=2, steps=6, lr=0.5)
    result = concept_inversion(toy_backend, toy_classifiers, "stripes", budget=budget)
    assert len(result["restarts"]) == 2 and result["k"] == max(result["restarts"]) and result["n"] == 6
    # So a result kept with fewer restarts is the start of one with more (the benchmark reuses it).
    second = inversion_restart(toy_backend, toy_classifiers, "stripes", budget=budget, restart=1)
    alone = inversion_restart(toy_backend, toy_classifiers, "stripes", budget=replace(budget, seed=1), restart=0)
    assert second == alone and second["k"] == result["restarts"][1]
