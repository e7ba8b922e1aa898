"""The baselines (ESD-x, ESD-u, LECO, UCE) on SPARE's backend and trainer: formulas checked by hand on fixed batches."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch import nn

from spare_core import ConceptPair, ErasureConfig
from spare_core.baselines.esd import EditedModelSampling, ddim_timesteps, signal_level
from spare_core.baselines.methods import BASELINES, get_method, method_modules, run_baseline
from spare_core.baselines.uce import token_rows, uce_deltas
from spare_core.timesteps import TimestepSampler
from spare_core.trainer import SelfDistillationTrainer, TrainingData, constant_lr
from spare_core.weight_delta import WeightDelta, save_delta_file


def _config(**settings) -> ErasureConfig:
    return ErasureConfig([ConceptPair("red", "plain")], base_model="toy").with_settings(**settings)


# --------------------------------------------------------------------------- the weight delta


def test_a_weight_delta_adds_exactly_what_editing_the_weight_would():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Conv2d(4, 3, 3, padding=1, stride=2))
    delta = WeightDelta(model, ["0", "1"])
    d_lin, d_conv = torch.randn(4, 5), torch.randn(3, 4, 3, 3)
    delta.set_delta("0", d_lin)
    delta.set_delta("1", d_conv)
    x = torch.randn(2, 5)
    lin = nn.Linear(5, 4)
    lin.load_state_dict({"weight": model[0].weight + d_lin, "bias": model[0].bias})
    with torch.no_grad(), delta.applied(0.5):
        half = model[0](x)
    assert torch.allclose(half, model[0](x) + 0.5 * x @ d_lin.T, atol=1e-6)
    with torch.no_grad(), delta.applied():
        assert torch.allclose(model[0](x), lin(x), atol=1e-6)
        image = torch.randn(1, 4, 6, 6)
        edited_conv = nn.functional.conv2d(image, model[1].weight + d_conv, model[1].bias, stride=2, padding=1)
        assert torch.allclose(model[1](image), edited_conv, atol=1e-5)
    assert torch.equal(model[0](x), nn.functional.linear(x, model[0].weight, model[0].bias))  # detached again
    assert delta.num_trainable() == 4 * 5 + 3 * 4 * 9


def test_a_delta_file_holds_one_diff_per_layer_and_must_say_so_in_its_name(tmp_path):
    deltas = {"a.to_k": torch.randn(3, 2)}
    with pytest.raises(ValueError, match="delta.safetensors"):
        save_delta_file(deltas, {"a.to_k": "lora_unet_a_to_k"}, tmp_path / "edit.safetensors")
    path = save_delta_file(deltas, {"a.to_k": "lora_unet_a_to_k"}, tmp_path / "edit.delta.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == ["lora_unet_a_to_k.diff"]
        assert torch.allclose(f.get_tensor("lora_unet_a_to_k.diff").float(), deltas["a.to_k"], atol=1e-3)
        assert f.metadata()["spare_format"] == "weight_delta"


# --------------------------------------------------------------------------- which layers


def test_esd_x_and_esd_u_split_the_layers_as_the_paper_script_does(toy_backend):
    unet = toy_backend.denoiser()
    x = set(method_modules(unet, "cross_attention"))
    u = set(method_modules(unet, "non_cross_attention"))
    kv = set(method_modules(unet, "cross_attention_kv"))
    assert x and u and not x & u
    assert all(".attn2." in n for n in x) and kv < x
    assert all(n.endswith(("to_k", "to_v")) for n in kv)
    assert not any(n.startswith(("time_embedding", "conv_out")) for n in u)
    assert any(n.startswith("conv_in") for n in u)
    leco = set(method_modules(unet, "transformer"))
    assert x < leco and any(".attn1." in n for n in leco) and not any("resnets" in n for n in leco)


# --------------------------------------------------------------------------- ESD's target


def _fixed_source(backend, n=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randn((n, *backend.latent_shape), generator=gen)
    t = torch.tensor([100, 500, 900])[:n]
    index = torch.arange(n) % 2
    return lambda g, batch: (index, x_t, t)


@pytest.mark.parametrize("anchor", ["empty", "surrogate"])
def test_the_esd_loss_is_negative_guidance_from_the_frozen_model_toward_the_anchor(toy_backend, anchor):
    backend = toy_backend
    prompts = ["a circle in red style", "a star in red style"]
    anchors = ["", ""] if anchor == "empty" else ["a circle in plain style", "a star in plain style"]
    concept, anchor_cond = backend.encode_prompts(prompts), backend.encode_prompts(anchors)
    modules = method_modules(backend.denoiser(), "cross_attention")
    delta = WeightDelta(backend.denoiser(), modules)
    gen = torch.Generator().manual_seed(3)
    for name, param in zip(delta.module_names, delta.deltas, strict=True):
        delta.set_delta(name, 0.05 * torch.randn(param.shape, generator=gen))
    empty = torch.zeros((0, *backend.latent_shape))
    data = TrainingData(
        empty, torch.zeros(0, dtype=torch.long), concept, anchor_cond, empty, torch.zeros(0, dtype=torch.long), concept
    )
    eta = 1.7
    config = _config(eta=eta, retain_weight=0.0, batch_size=3, steps=1, lr=1e-9, grad_clip=0.0)
    source = _fixed_source(backend)
    trainer = SelfDistillationTrainer(
        backend, delta, data, TimestepSampler.uniform(1000), config, forget_source=source, lr_schedule=constant_lr
    )
    report = trainer.train_step()

    index, x_t, t = source(None, 3)
    with torch.no_grad():
        eps_anchor = backend.predict_noise(x_t, t, anchor_cond.select(index)).float()
        eps_concept = backend.predict_noise(x_t, t, concept.select(index)).float()
        target = eps_anchor - eta * (eps_concept - eps_anchor)
        with delta.applied():
            student = backend.predict_noise(x_t, t, concept.select(index)).float()
    by_hand = (student - target).pow(2).mean().item()
    assert report.forget_loss == pytest.approx(by_hand, rel=1e-4)
    assert report.retain_loss == 0.0
    # The edit matters: without it the student is the frozen model and the loss is (1 + eta)^2 |eps_c - eps_a|^2.
    frozen = ((1 + eta) * (eps_concept - eps_anchor)).pow(2).mean().item()
    assert abs(frozen - by_hand) > 1e-4 * frozen


# --------------------------------------------------------------------------- ESD's x_t


def test_signal_level_is_the_schedulers_alpha_bar(toy_backend, toy_pipe):
    t = torch.tensor([0, 10, 500, 999])
    expected = toy_pipe.scheduler.alphas_cumprod[t].float()
    assert torch.allclose(signal_level(toy_backend, t), expected, atol=1e-5)
    assert ddim_timesteps(1000, 50)[:3] == [980, 960, 940] and ddim_timesteps(1000, 50)[-1] == 0


def test_esd_x_t_are_k_ddim_steps_of_the_edited_model_with_guidance(toy_backend, toy_pipe):
    backend = toy_backend
    concept = backend.encode_prompts(["a ring in blue style", "a cross in dots style"])
    uncond = backend.encode_prompts([""])
    delta = WeightDelta(backend.denoiser(), method_modules(backend.denoiser(), "cross_attention_kv"))
    gen = torch.Generator().manual_seed(0)
    for name, param in zip(delta.module_names, delta.deltas, strict=True):
        delta.set_delta(name, 0.1 * torch.randn(param.shape, generator=gen))
    source = EditedModelSampling(backend, delta, concept, uncond, guidance=3.0, ddim_steps=10)
    index, x_t, t = source(torch.Generator().manual_seed(7), 2)

    # By hand, drawing in the same order: the prompts, the stop k, the noise; DDIM with the scheduler's alpha_bar.
    g = torch.Generator().manual_seed(7)
    expected_index = torch.randint(2, (2,), generator=g)
    k = int(torch.randint(1, 10, (1,), generator=g))
    x = torch.randn((2, *backend.latent_shape), generator=g)
    steps = list(range(900, -1, -100))
    a = toy_pipe.scheduler.alphas_cumprod
    with torch.no_grad(), delta.applied():
        for i in range(k):
            tt = torch.full((2,), steps[i])
            eps_u = backend.predict_noise(x, tt, uncond.repeat(2)).float()
            eps_c = backend.predict_noise(x, tt, concept.select(expected_index)).float()
            eps = eps_u + 3.0 * (eps_c - eps_u)
            x0 = (x - (1 - a[steps[i]]).sqrt() * eps) / a[steps[i]].sqrt()
            x = a[steps[i + 1]].sqrt() * x0 + (1 - a[steps[i + 1]]).sqrt() * eps
    assert torch.equal(index, expected_index)
    assert torch.equal(t, torch.full((2,), steps[k]))
    assert torch.allclose(x_t, x, atol=1e-4)
    assert not delta.attached


# --------------------------------------------------------------------------- UCE on the model


def test_uce_on_the_model_solves_its_normal_equations_per_layer(toy_backend):
    backend = toy_backend
    concept = backend.encode_prompts(["a circle in red style"])
    guide = backend.encode_prompts(["a circle in plain style"])
    keep = backend.encode_prompts(["a square in blue style", "a star in dots style"])
    unet = backend.denoiser()
    names = method_modules(unet, "cross_attention_kv")[:2]
    lam = 0.5
    deltas = uce_deltas(unet, names, concept, guide, keep, lam=lam)
    c, g, p = (token_rows(x).double() for x in (concept, guide, keep))
    for name in names:
        w0 = dict(unet.named_modules())[name].weight.detach().double()
        w = w0 + deltas[name].double()
        grad = lam * (w - w0) + (w @ c.T - w0 @ g.T) @ c + (w @ p.T - w0 @ p.T) @ p
        scale = ((w0 @ g.T) @ c).abs().max() + ((w0 @ p.T) @ p).abs().max()  # the terms that must cancel
        assert grad.abs().max() < 1e-5 * scale  # the delta is stored in float32
        assert deltas[name].abs().max() > 0


# --------------------------------------------------------------------------- running a method


def test_every_declared_method_names_a_known_module_set_and_objective(toy_backend):
    for method in BASELINES.values():
        assert method.objective in ("esd", "uce")
        assert method_modules(toy_backend.denoiser(), method.modules)
    with pytest.raises(ValueError, match="unknown baseline"):
        get_method("esd_z")


def test_esd_x_runs_on_the_trainer_changes_only_its_layers_and_exports_a_delta_file(toy_backend, tmp_path):
    result = run_baseline(toy_backend, "esd_x", _config(), steps=2, lr=1e-3)
    assert result.history is not None and len(result.history.losses) == 2
    assert result.config.retain_weight == 0.0 and result.config.eta == 1.0
    changed = [n for n, d in result.edit.export().items() if d.abs().max() > 0]
    assert changed and all(".attn2." in n for n in changed)
    assert not result.edit.attached
    path = result.save(tmp_path / "esd_x_red.delta.safetensors", toy_backend)
    with safe_open(str(path), framework="pt") as f:
        assert len(list(f.keys())) == len(result.edit.module_names)
        assert all(k.endswith(".diff") for k in f.keys())


def test_a_noised_baseline_draws_only_the_forget_images_it_trains_on(toy_backend, monkeypatch):
    """Its clock must not hold the surrogate and retain images SPARE draws and it never reads."""
    from spare_core.prompts import build_prompt_set

    config = _config(images_per_prompt=1, sample_steps=2)
    drawn = []
    sample = toy_backend.sample

    def counting_sample(prompts, *args, **kwargs):
        drawn.extend(prompts)
        return sample(prompts, *args, **kwargs)

    monkeypatch.setattr(toy_backend, "sample", counting_sample)
    result = run_baseline(toy_backend, "esd_x_noised", config, steps=1)
    forget = build_prompt_set(config, toy_backend.domain).forget
    assert sorted(drawn) == sorted(forget)
    assert result.history is not None and len(result.history.losses) == 1


def test_preparing_sets_refuses_kinds_it_does_not_know(toy_backend):
    from spare_core.erasure import prepare_sets

    with pytest.raises(ValueError, match="kinds must include 'forget'"):
        prepare_sets(toy_backend, _config(), kinds=("retain",))


def test_leco_trains_a_lora_that_loads_as_one(toy_backend, tmp_path):
    from spare_core import read_lora

    result = run_baseline(toy_backend, "leco", _config(), steps=2)
    assert result.lr == 1e-4 and result.steps == 2
    lora = read_lora(result.save(tmp_path / "leco_red.safetensors", toy_backend))
    assert len(lora.layers()) == len(method_modules(toy_backend.denoiser(), "transformer"))
    assert all(w.rank == 4 and w.alpha == 1.0 for w in lora.layers().values())


def test_uce_moves_the_concepts_prediction_toward_its_guides(toy_backend):
    result = run_baseline(toy_backend, "uce", _config())
    assert result.history is None and result.steps == 0
    cond = toy_backend.encode_prompts(["a circle image in red style", "a circle image in plain style"])
    x = torch.randn((1, *toy_backend.latent_shape), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([600])
    with torch.no_grad():
        red, plain = (toy_backend.predict_noise(x, t, cond.select(slice(i, i + 1))) for i in (0, 1))
        with result.applied():
            red_after = toy_backend.predict_noise(x, t, cond.select(slice(0, 1)))
    assert (red_after - plain).pow(2).mean() < 0.5 * (red - plain).pow(2).mean()
