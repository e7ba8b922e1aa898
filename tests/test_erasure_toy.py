"""SPARE on the shipped toy model: it erases, keeps the rest, and is reproducible."""

import pytest
import torch

from spare_core import CancelToken, ConceptPair, ErasureCancelled, ErasureConfig, erase, prepare_sets
from spare_core.events import Monitor
from spare_core.timesteps import TimestepSampler
from spare_core.toy.erasure_eval import evaluation_grid, score
from spare_core.trainer import SelfDistillationTrainer

EVAL_SEEDS = [21, 22, 23, 24]  # 4 seeds x 6 prompts = 24 generations of an erased concept


@pytest.fixture(scope="module")
def backend(toy_backend):
    return toy_backend


@pytest.fixture(scope="module")
def base_grid(backend, toy_classifiers):
    return evaluation_grid(backend, toy_classifiers, EVAL_SEEDS)


def _erase_and_score(backend, toy_classifiers, base_grid, pairs):
    config = ErasureConfig(concepts=pairs)
    result = erase(backend, config)
    with result.adapter.applied():
        after = evaluation_grid(backend, toy_classifiers, EVAL_SEEDS)
    return result, score(base_grid, pairs), score(after, pairs)


@pytest.mark.slow
def test_erasing_a_style_removes_it_and_keeps_the_rest(backend, toy_classifiers, base_grid):
    result, before, after = _erase_and_score(backend, toy_classifiers, base_grid, [ConceptPair("red", "plain")])
    (b,), (a,) = before, after
    assert a.erased_generations >= 24
    assert b.ua <= 0.2  # the base model does draw red
    assert a.ua >= 0.8, a
    assert a.ira >= b.ira - 0.05, (b, a)
    assert a.cra >= b.cra - 0.05, (b, a)
    # The object survives: the model draws a plain circle, not a blob. The bench
    # measured 0.92 for red (base 1.00); a LoRA on modules chosen among all types
    # let objects degrade to 0.58, which this bound catches.
    assert a.other_attribute >= b.other_attribute - 0.15, (b, a)
    # The adapter is sparse: a few modules, far fewer weights than the UNet.
    unet_params = sum(p.numel() for p in backend.denoiser().parameters())
    assert result.adapter.num_trainable() < 0.02 * unet_params


@pytest.mark.slow
def test_one_adapter_erases_two_concepts(backend, toy_classifiers, base_grid):
    pairs = [ConceptPair("blue", "plain"), ConceptPair("star", "circle")]
    _, before, after = _erase_and_score(backend, toy_classifiers, base_grid, pairs)
    for b, a in zip(before, after, strict=True):
        assert b.ua <= 0.3, b
        assert a.ua >= 0.8, a


def _small_config(**kw) -> ErasureConfig:
    base = dict(
        concepts=[ConceptPair("yellow", "plain")],
        images_per_prompt=1,
        retain_images=8,
        steps=6,
        saliency_batches=1,
        profile_points=5,
    )
    base.update(kw)
    return ErasureConfig(**base)


def _weights(adapter):
    return {n: (w.down.clone(), w.up.clone()) for n, w in adapter.export().items()}


@pytest.mark.slow
def test_same_seed_same_lora_and_other_seed_differs(backend):
    a = erase(backend, _small_config())
    b = erase(backend, _small_config())
    c = erase(backend, _small_config(seed=1))
    wa, wb, wc = _weights(a.adapter), _weights(b.adapter), _weights(c.adapter)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name][0], wb[name][0]) and torch.equal(wa[name][1], wb[name][1])
    assert any(not torch.equal(wa[n][1], wc[n][1]) for n in wa if n in wc) or wa.keys() != wc.keys()


def test_resumed_training_ends_with_the_same_adapter(backend, tmp_path):
    from spare_core.adapter import SparseLoRA

    config = _small_config()
    data = prepare_sets(backend, config).data
    modules = ["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "conv_in"]
    sampler = TimestepSampler.uniform(backend.num_train_timesteps)

    def trainer():
        adapter = SparseLoRA(backend.denoiser(), modules, config.rank, config.alpha, seed=config.seed)
        return SelfDistillationTrainer(backend, adapter, data, sampler, config)

    straight = trainer()
    straight.run()
    checkpoint = tmp_path / "ckpt.safetensors"
    interrupted = trainer()
    token = CancelToken()
    cancel_at_3 = Monitor(lambda event: event.step >= 3 and token.cancel(), token)
    with pytest.raises(ErasureCancelled):
        interrupted.run(cancel_at_3, checkpoint_path=checkpoint, checkpoint_every=3)
    assert checkpoint.exists()
    resumed = trainer()
    resumed.run(checkpoint_path=checkpoint)
    assert resumed.step == config.steps
    for name in modules:
        assert torch.equal(straight.adapter.branch(name).up, resumed.adapter.branch(name).up)
        assert torch.equal(straight.adapter.branch(name).down, resumed.adapter.branch(name).down)
    assert straight.history.losses == resumed.history.losses


def test_a_checkpoint_of_another_configuration_is_refused(backend, tmp_path):
    checkpoint = tmp_path / "ckpt.safetensors"
    token = CancelToken()

    def cancel_at_train_step_3(event):
        if event.stage == "train" and event.step >= 3:
            token.cancel()

    with pytest.raises(ErasureCancelled):
        erase(
            backend,
            _small_config(),
            on_event=cancel_at_train_step_3,
            cancel=token,
            checkpoint=checkpoint,
            checkpoint_every=3,
        )
    assert checkpoint.exists()  # a cancelled run keeps its checkpoint, so that it can resume
    with pytest.raises(ValueError, match="another configuration"):
        erase(backend, _small_config(lr=1e-2), checkpoint=checkpoint)


def test_cancelled_erase_writes_no_file(tmp_path, monkeypatch, capsys):
    from spare_core import trainer as trainer_module
    from spare_core.cli import main

    original = trainer_module.SelfDistillationTrainer.train_step

    def interrupted(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(trainer_module.SelfDistillationTrainer, "train_step", interrupted)
    out = tmp_path / "yellow.safetensors"
    code = main(
        [
            "erase",
            "--concept",
            "yellow",
            "--surrogate",
            "plain",
            "--steps",
            "5",
            "--images-per-prompt",
            "1",
            "--retain-images",
            "8",
            "--out",
            str(out),
        ]
    )
    assert code == 130
    assert "nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_saliency_picks_different_modules_for_a_style_and_an_object(backend):
    from spare_core.saliency import compute_saliency

    top = {}
    for concept, surrogate in (("red", "plain"), ("circle", "square")):
        config = _small_config(concepts=[ConceptPair(concept, surrogate)], images_per_prompt=2)
        sets = prepare_sets(backend, config)
        prompts, data = sets.prompts, sets.data
        saliency = compute_saliency(
            backend,
            data.forget_latents,
            data.forget_prompt_index,
            prompts.forget,
            prompts.surrogate,
            mode="forget_over_retain",  # the concept-specific mode; "denoise" ranks alike for every concept
            retain_latents=data.retain_latents,
            retain_prompt_index=data.retain_prompt_index,
            retain_prompts=prompts.retain,
            batches=2,
        )
        top[concept] = set(saliency.select_modules(top_k=config.top_k))
    jaccard = len(top["red"] & top["circle"]) / len(top["red"] | top["circle"])
    assert jaccard <= 0.5, top


def test_surrogate_images_join_only_the_training_pool(backend):
    plain = _small_config(surrogate_images_per_prompt=0)
    anchored = _small_config(surrogate_images_per_prompt=2)
    without = prepare_sets(backend, plain).data
    sets = prepare_sets(backend, anchored)
    prompts, data = sets.prompts, sets.data
    # Profile and saliency read forget_latents: the concept's images, unchanged.
    assert without.surrogate_latents is None
    assert torch.equal(data.forget_latents, without.forget_latents)
    assert data.surrogate_prompt_index.tolist() == [i for i in range(len(prompts.surrogate)) for _ in range(2)]
    pool, pool_index = data.forget_pool()
    assert len(pool) == len(data.forget_latents) + len(data.surrogate_latents)
    assert torch.equal(pool[len(data.forget_latents) :], data.surrogate_latents)
    assert torch.equal(pool_index[len(data.forget_latents) :], data.surrogate_prompt_index)
    # Surrogate images are new drawings, not copies of the concept's.
    assert not torch.equal(data.surrogate_latents[::2], data.forget_latents)


def test_forget_target_pushes_away_only_on_concept_images():
    from spare_core.trainer import forget_target

    eps_s = torch.randn(4, 3, 2, 2)
    eps_f = torch.randn(4, 3, 2, 2)
    on_surrogate = torch.tensor([False, True, False, True])
    target = forget_target(eps_s, eps_f, 1.5, on_surrogate)
    assert torch.allclose(target[0], eps_s[0] - 1.5 * (eps_f[0] - eps_s[0]))
    assert torch.allclose(target[2], eps_s[2] - 1.5 * (eps_f[2] - eps_s[2]))
    assert torch.equal(target[1], eps_s[1]) and torch.equal(target[3], eps_s[3])


def test_the_teacher_predicts_the_concept_only_where_the_target_uses_it(backend, monkeypatch):
    """On surrogate images the forget target is eps_s alone, so eps_f is not computed there; the loss is the
    one the formula gives with eps_f computed on every row."""
    from spare_core.adapter import SparseLoRA, normal_weights
    from spare_core.trainer import TrainingData, forget_target

    concept = backend.encode_prompts(["a circle in red style"])
    surrogate = backend.encode_prompts(["a circle in plain style"])
    gen = torch.Generator().manual_seed(2)
    latents = torch.randn((8, *backend.latent_shape), generator=gen)
    empty = torch.zeros((0, *backend.latent_shape))
    one_prompt = torch.zeros(4, dtype=torch.long)
    data = TrainingData(
        latents[:4], one_prompt, concept, surrogate, empty, torch.zeros(0).long(), concept, latents[4:], one_prompt
    )
    config = ErasureConfig([ConceptPair("red", "plain")]).with_settings(retain_weight=0.0, batch_size=8, steps=1)
    adapter = SparseLoRA(backend.denoiser(), ["mid_block.attentions.0.transformer_blocks.0.attn2.to_v"], 4, 4.0)
    trainer = SelfDistillationTrainer(backend, adapter, data, TimestepSampler.uniform(1000), config)
    calls = []
    predict = backend.predict_noise

    def recording(x_t, t, cond):
        eps = predict(x_t, t, cond)
        calls.append((x_t.detach().clone(), t.clone(), eps.detach().float().clone()))
        return eps

    monkeypatch.setattr(backend, "predict_noise", recording)
    with torch.inference_mode(False), normal_weights(backend.denoiser()):
        report = trainer.train_step()
    (teacher_x, _, teacher_eps), (x_t, t, student_eps) = calls
    concept_rows = len(teacher_x) - len(x_t)
    on_surrogate = torch.tensor([not any(torch.equal(x, c) for c in teacher_x[len(x_t) :]) for x in x_t])
    assert 0 < concept_rows < len(x_t) and int((~on_surrogate).sum()) == concept_rows
    with torch.no_grad():
        eps_s = teacher_eps[: len(x_t)]
        eps_f = predict(x_t, t, concept.select(torch.zeros(len(x_t), dtype=torch.long))).float()
    target = forget_target(eps_s, eps_f, config.eta, on_surrogate)
    assert report.forget_loss == pytest.approx((student_eps - target).pow(2).mean().item(), rel=1e-4)


@pytest.mark.parametrize("mode", ["uniform", "forget"])
def test_retain_timesteps_are_drawn_uniformly_or_as_the_forget_terms(backend, monkeypatch, mode):
    """With the forget sampler on one timestep, the retain rows share it only under ``retain_timesteps`` forget."""
    from spare_core.adapter import SparseLoRA, normal_weights
    from spare_core.trainer import TrainingData

    concept = backend.encode_prompts(["a circle in red style"])
    surrogate = backend.encode_prompts(["a circle in plain style"])
    retain = backend.encode_prompts(["a square in blue style"])
    latents = torch.randn((8, *backend.latent_shape), generator=torch.Generator().manual_seed(3))
    empty = torch.zeros((0, *backend.latent_shape))
    one_prompt = torch.zeros(4, dtype=torch.long)
    data = TrainingData(
        latents[:4], one_prompt, concept, surrogate, latents[4:], one_prompt, retain, empty, torch.zeros(0).long()
    )
    config = ErasureConfig([ConceptPair("red", "plain")]).with_settings(
        retain_timesteps=mode, retain_focus=0.0, batch_size=16, steps=1
    )
    adapter = SparseLoRA(backend.denoiser(), ["mid_block.attentions.0.transformer_blocks.0.attn2.to_v"], 4, 4.0)
    only_137 = torch.zeros(1000)
    only_137[137] = 1.0
    trainer = SelfDistillationTrainer(backend, adapter, data, TimestepSampler(only_137), config)
    seen = []
    predict = backend.predict_noise

    def recording(x_t, t, cond):
        seen.append(t.clone())
        return predict(x_t, t, cond)

    monkeypatch.setattr(backend, "predict_noise", recording)
    with torch.inference_mode(False), normal_weights(backend.denoiser()):
        trainer.train_step()
    student_t = seen[-1]
    forget_t, retain_t = student_t[:16], student_t[16:]
    assert len(retain_t) == 16 and bool((forget_t == 137).all())
    if mode == "forget":
        assert bool((retain_t == 137).all())
    else:
        assert int((retain_t != 137).sum()) >= 14  # uniform over 1000 steps: a repeat of 137 is rare
