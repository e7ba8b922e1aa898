"""Robust mode: adversarial text states that bring the concept back, within their radius, and trained against."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from spare_core import ConceptPair, ErasureConfig
from spare_core.backend import Conditioning
from spare_core.baselines.methods import method_modules
from spare_core.batch import LATER_SETTINGS, parse_jobs
from spare_core.config import SETTINGS_BEFORE_THEY_EXISTED
from spare_core.timesteps import TimestepSampler
from spare_core.trainer import SelfDistillationTrainer, TrainingData, constant_lr
from spare_core.weight_delta import WeightDelta


def _trainer(backend, robust: float):
    prompts = ["a circle in red style", "a star in red style"]
    concept = backend.encode_prompts(prompts)
    surrogate = backend.encode_prompts(["a circle in plain style", "a star in plain style"])
    delta = WeightDelta(backend.denoiser(), method_modules(backend.denoiser(), "cross_attention_kv"))
    gen = torch.Generator().manual_seed(3)
    for name, param in zip(delta.module_names, delta.deltas, strict=True):
        delta.set_delta(name, 0.05 * torch.randn(param.shape, generator=gen))
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn((4, *backend.latent_shape), generator=gen)
    empty = torch.zeros((0, *backend.latent_shape))
    data = TrainingData(latents, torch.tensor([0, 1, 0, 1]), concept, surrogate, empty, torch.zeros(0).long(), concept)
    config = ErasureConfig([ConceptPair("red", "plain")]).with_settings(
        robust=robust, retain_weight=0.0, batch_size=2, steps=2, lr=1e-3
    )
    trainer = SelfDistillationTrainer(
        backend, delta, data, TimestepSampler.uniform(1000), config, lr_schedule=constant_lr
    )
    return trainer, concept, delta


def test_the_adversarial_states_stay_within_the_radius_and_bring_the_concept_back(toy_backend):
    trainer, concept, delta = _trainer(toy_backend, robust=0.3)
    gen = torch.Generator().manual_seed(5)
    x_t = torch.randn((2, *toy_backend.latent_shape), generator=gen)
    t = torch.tensor([300, 700])
    with torch.no_grad():
        eps_concept = toy_backend.predict_noise(x_t, t, concept).float()
    with torch.inference_mode(False):
        adversarial = trainer._adversarial_conditioning(x_t, t, concept, eps_concept)
    shift = adversarial.hidden_states - concept.hidden_states
    radius = 0.3 * concept.hidden_states.float().pow(2).mean().sqrt()
    assert 0 < shift.abs().max() <= radius + 1e-6

    def recovery_error(cond) -> float:  # how far the edited model is from drawing the concept
        with torch.no_grad(), delta.applied():
            return (toy_backend.predict_noise(x_t, t, cond).float() - eps_concept).pow(2).mean().item()

    assert recovery_error(adversarial) < recovery_error(concept)
    assert all(p.grad is None for p in delta.trainable_parameters())  # only the states were differentiated


def test_robust_mode_averages_the_forget_term_over_the_prompt_and_its_adversarial_states(toy_backend, monkeypatch):
    plain, _, plain_delta = _trainer(toy_backend, robust=0.0)
    robust, _, robust_delta = _trainer(toy_backend, robust=0.3)
    shifted = []

    def fixed_attack(x_t, t, cond, eps_concept):  # a known perturbation in place of the search
        shifted.append((x_t, t, Conditioning(cond.hidden_states + 0.5, cond.extra)))
        return shifted[-1][2]

    monkeypatch.setattr(robust, "_adversarial_conditioning", fixed_attack)
    with torch.inference_mode(False):
        plain_report, robust_report = plain.train_step(), robust.train_step()
    assert len(shifted) == 1  # one search per step
    # Same batch and start: the plain term is the plain run's loss, and the robust loss is the mean of it and
    # the term under the shifted states, which must differ from it.
    adversarial_term = 2 * robust_report.forget_loss - plain_report.forget_loss
    assert adversarial_term > 0 and adversarial_term != pytest.approx(plain_report.forget_loss, rel=1e-3)
    moved = [(a - b).abs().max().item() for a, b in zip(plain_delta.deltas, robust_delta.deltas, strict=True)]
    assert max(moved) > 0  # the update differs too


def test_a_job_hash_leaves_out_a_later_setting_at_the_value_of_the_runs_before_it(tmp_path):
    old_values = {name: SETTINGS_BEFORE_THEY_EXISTED[name] for name in LATER_SETTINGS}
    entry = {
        "concept": "red",
        "surrogate": "plain",
        "settings": {"steps": 3, **old_values},
        "output": "red.safetensors",
    }
    (job,) = parse_jobs([entry], tmp_path)
    config = json.loads(job.config("toy").to_json())
    for name in LATER_SETTINGS:  # the hash a job had before these settings existed
        config.pop(name)
    before = hashlib.sha256(json.dumps({"method": "spare", "config": config}, sort_keys=True).encode()).hexdigest()
    assert job.settings_hash("toy") == before[:16]
    for name in LATER_SETTINGS:  # any other value is a different run
        old = old_values[name]
        other = (not old) if isinstance(old, bool) else "forget" if isinstance(old, str) else 0.3
        assert other != old
        changed = {**entry, "settings": {**entry["settings"], name: other}}
        assert parse_jobs([changed], tmp_path)[0].settings_hash("toy") != job.settings_hash("toy")


def _states(rows) -> Conditioning:
    return Conditioning(torch.tensor(rows, dtype=torch.float32).unsqueeze(1))  # one token per prompt


def test_retain_focus_draws_the_retain_prompts_nearest_the_concept_more_often():
    from spare_core.trainer import retain_sampling_weights

    empty = torch.zeros(0, 1)
    concept = _states([[1.0, 0.0, 0.0]])
    retain = _states([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    index = torch.tensor([0, 0, 1, 2, 3, 3])  # two latents of prompts 0 and 3, one of 1 and 2
    data = TrainingData(empty, torch.zeros(0).long(), concept, concept, torch.zeros(6, 1), index, retain)

    uniform = retain_sampling_weights(data, 0.0)
    per_prompt = torch.zeros(4).index_add_(0, index, uniform)
    assert torch.allclose(per_prompt, torch.full((4,), 0.25))  # every prompt equally often, however many latents

    focused = torch.zeros(4).index_add_(0, index, retain_sampling_weights(data, 0.5))
    assert focused.sum().item() == pytest.approx(1.0)
    assert focused.argmax().item() == 0 and focused[0] > 0.5  # the neighbour of the concept
    assert focused[3] == pytest.approx(0.5 / 4, abs=1e-3)  # the opposite prompt keeps its uniform share


def test_retain_focus_on_the_surrogate_also_draws_the_retain_prompts_nearest_the_surrogate():
    from spare_core.trainer import retain_sampling_weights

    empty = torch.zeros(0, 1)
    concept, surrogate = _states([[1.0, 0.0, 0.0]]), _states([[0.0, 1.0, 0.0]])
    retain = _states([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0], [-1.0, -1.0, 0.0]])
    index = torch.arange(4)
    data = TrainingData(empty, torch.zeros(0).long(), concept, surrogate, torch.zeros(4, 1), index, retain)

    concept_only = retain_sampling_weights(data, 0.5)
    both = retain_sampling_weights(data, 0.5, surrogate=True)
    assert both.sum().item() == pytest.approx(1.0)
    assert both[1] > 2 * concept_only[1]  # the surrogate's neighbour, drawn far more often
    assert both[1].item() == pytest.approx(both[0].item(), rel=0.05)  # about as often as the concept's own neighbour
    assert both[0] < concept_only[0]  # whose share it partly takes
    assert both[3].item() == pytest.approx(concept_only[3].item(), abs=1e-3)  # far from both: uniform share


class _RemovedTable(dict):
    """Stands in for the toy world's table of other names: any read fails the test."""

    def _refuse(self, *args, **kwargs):
        raise AssertionError("robust mode read the toy world's table of synonyms")

    __getitem__ = get = keys = values = items = __iter__ = __contains__ = __len__ = _refuse


def test_robust_mode_erases_without_the_toy_worlds_synonym_table(toy_backend, monkeypatch):
    from spare_core import erase
    from spare_core.toy import erasure_eval, world

    # The table, the lookup built from it at import, and the evaluation's own binding of it.
    for module, name in (
        (world, "ALTERNATIVE_NAMES"),
        (world, "_NAME_TO_CONCEPT"),
        (erasure_eval, "ALTERNATIVE_NAMES"),
    ):
        monkeypatch.setattr(module, name, _RemovedTable())
    config = ErasureConfig([ConceptPair("red", "plain")]).with_settings(
        robust=0.3, steps=2, images_per_prompt=1, surrogate_images_per_prompt=0, retain_images=4, sample_steps=2,
        saliency_batches=1, profile_points=2, batch_size=2, top_k=2,
    )  # fmt: skip
    result = erase(toy_backend, config)
    assert result.history is not None and len(result.history.forget_losses) == 2
    assert any(b.up.abs().sum() > 0 for b in result.adapter.branches)  # it trained
