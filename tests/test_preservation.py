"""Text-state preservation: the penalty's formula, its effect in training, and the job hashes around it."""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from spare_core import ConceptPair, ErasureConfig
from spare_core.adapter import SparseLoRA
from spare_core.batch import BASELINE_HASHED_AS, parse_jobs
from spare_core.preservation import TextStatePreservation
from spare_core.saliency import candidate_modules
from spare_core.timesteps import TimestepSampler
from spare_core.trainer import SelfDistillationTrainer, TrainingData, constant_lr, preserved_states


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn1, self.attn2 = nn.Module(), nn.Module()
        self.attn1.to_q = nn.Linear(6, 5)
        self.attn2.to_k = nn.Linear(6, 5, bias=False)
        self.attn2.to_v = nn.Linear(6, 3, bias=False)


def test_the_penalty_is_each_text_modules_relative_change_energy_averaged():
    torch.manual_seed(0)
    model = nn.Module()
    model.block = _Block()
    lora = SparseLoRA(model, ["block.attn1.to_q", "block.attn2.to_k", "block.attn2.to_v"], rank=2, alpha=4.0)
    for branch in lora.branches:
        nn.init.normal_(branch.up)
    states = torch.randn(3, 4, 6)  # 3 prompts x 4 tokens
    penalty = TextStatePreservation(lora, states)

    h = states.reshape(-1, 6)
    by_hand = []
    for name in ("block.attn2.to_k", "block.attn2.to_v"):  # attn1.to_q does not read the prompt
        module, branch = dict(model.named_modules())[name], lora.branch(name)
        change = h @ branch.down.T @ branch.up.T * (4.0 / 2)
        by_hand.append(change.pow(2).mean() / (h @ module.weight.T).pow(2).mean())
    assert penalty.active
    assert torch.allclose(penalty.loss(), torch.stack(by_hand).mean(), rtol=1e-5)
    penalty.loss().backward()
    assert lora.branch("block.attn2.to_k").up.grad is not None
    assert lora.branch("block.attn1.to_q").up.grad is None

    only_self_attention = SparseLoRA(model, ["block.attn1.to_q"])
    assert not TextStatePreservation(only_self_attention, states).active


def test_the_penalty_trains_on_states_made_under_inference_mode():
    # ComfyUI runs its nodes under torch.inference_mode(): the states and the penalty are made there.
    model = nn.Module()
    model.block = _Block()
    lora = SparseLoRA(model, ["block.attn2.to_k"], rank=2)
    nn.init.normal_(lora.branches[0].up)
    with torch.inference_mode():
        penalty = TextStatePreservation(lora, torch.randn(2, 3, 6))
    with torch.inference_mode(False):
        penalty.loss().backward()
    assert lora.branches[0].down.grad.abs().sum() > 0


def _change_on_retain(backend, preserve_weight: float) -> float:
    """The adapter's relative change on the retain prompts' states after a few steps of erasing ``red``."""
    concept = backend.encode_prompts(["a circle in red style", "a star in red style"])
    surrogate = backend.encode_prompts(["a circle in plain style", "a star in plain style"])
    retain = backend.encode_prompts(["a circle in blue style", "a star in blue style"])
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn((4, *backend.latent_shape), generator=gen)
    data = TrainingData(latents, torch.tensor([0, 1, 0, 1]), concept, surrogate, latents, torch.tensor([0, 1, 0, 1]),
                        retain)  # fmt: skip
    adapter = SparseLoRA(backend.denoiser(), candidate_modules(backend.denoiser(), "text"), rank=2, alpha=2.0)
    config = ErasureConfig([ConceptPair("red", "plain")]).with_settings(
        preserve_weight=preserve_weight, retain_weight=0.0, batch_size=2, steps=6, lr=2e-2
    )
    trainer = SelfDistillationTrainer(backend, adapter, data, TimestepSampler.uniform(1000), config,
                                      lr_schedule=constant_lr)  # fmt: skip
    with torch.inference_mode(False):
        trainer.run()
        return TextStatePreservation(adapter, preserved_states(data)).loss().item()


def test_training_with_the_penalty_changes_the_preserved_states_less(toy_backend):
    free, preserved = _change_on_retain(toy_backend, 0.0), _change_on_retain(toy_backend, 100.0)
    assert free > 0
    assert preserved < 0.5 * free


def test_a_baselines_hash_ignores_spare_only_settings_but_not_its_overrides(tmp_path):
    entry = {"concept": "red", "surrogate": "plain", "output": "red.safetensors", "method": "esd_x"}
    (plain,) = parse_jobs([entry], tmp_path, known_methods=("esd_x",))
    (spare_changed,) = parse_jobs(
        [{**entry, "settings": {"profile_floor": 0.7, "retain_focus": 0.5, "preserve_weight": 2.0, "top_k": 3}}],
        tmp_path, known_methods=("esd_x",),
    )  # fmt: skip
    (rate,) = parse_jobs([{**entry, "settings": {"lr": 1e-4}}], tmp_path, known_methods=("esd_x",))
    (data,) = parse_jobs([{**entry, "settings": {"retain_images": 32}}], tmp_path, known_methods=("esd_x",))
    assert spare_changed.settings_hash("toy") == plain.settings_hash("toy")
    assert rate.settings_hash("toy") != plain.settings_hash("toy")
    assert data.settings_hash("toy") != plain.settings_hash("toy")

    # The hash a baseline job had when hashes were first written: the whole configuration of that time.
    config = json.loads(plain.config("toy").to_json())
    config.update(BASELINE_HASHED_AS)
    for name in ("robust", "retain_focus", "preserve_weight", "retain_focus_surrogate", "retain_timesteps"):
        config.pop(name)
    first = hashlib.sha256(json.dumps({"method": "esd_x", "config": config}, sort_keys=True).encode()).hexdigest()
    assert plain.settings_hash("toy") == first[:16]
