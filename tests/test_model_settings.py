"""The model-level settings ``resolution`` and ``prediction``: schema, CLI, and what the stages make of them."""

from __future__ import annotations

import json

import pytest
import torch
from fakes import FakeBackend
from tiny import tiny_config

from spare_core import ConceptPair, ErasureConfig, SettingsError
from spare_core.backend import apply_model_settings
from spare_core.cli import main
from spare_core.config import SETTINGS_BY_NAME
from spare_core.erasure import _cache_key, prepare_sets


@pytest.fixture
def toy_copy(toy_pipe):
    """The toy model in a pipeline object of its own (sharing the weights), so configure() leaves others alone."""
    from diffusers import StableDiffusionPipeline

    from spare_core.backends.diffusers_backend import DiffusersBackend

    pipe = StableDiffusionPipeline(**toy_pipe.components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return DiffusersBackend(pipe, arch="toy")


def test_the_schema_declares_both_with_off_defaults():
    resolution, prediction = SETTINGS_BY_NAME["resolution"], SETTINGS_BY_NAME["prediction"]
    assert (resolution.kind, resolution.default, resolution.minimum, resolution.maximum) == ("int", 0, 0, 4096)
    assert (prediction.kind, prediction.default, prediction.choices) == ("choice", "", ("", "eps", "v"))
    config = ErasureConfig(concepts=[ConceptPair("red", "plain")])
    with pytest.raises(SettingsError, match="resolution must be 0 to 4096"):
        config.with_settings(resolution=5000).validate()
    with pytest.raises(SettingsError, match="unknown prediction 'x0'"):
        config.with_settings(prediction="x0").validate()


def test_files_written_before_the_settings_existed_read_as_native():
    stored = json.loads(ErasureConfig(concepts=[ConceptPair("red", "plain")]).to_json())
    del stored["resolution"], stored["prediction"]
    config = ErasureConfig.from_json(json.dumps(stored))
    assert (config.resolution, config.prediction) == (0, "")


def test_the_cli_shows_both_options(capsys):
    try:
        code = main(["erase", "--help"])
    except SystemExit as exc:
        code = exc.code
    assert code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--resolution INT" in out and "--prediction" in out
    assert "SDXL at 768" in out and "v-prediction" in out


def test_forcing_eps_on_a_v_model_reads_the_output_as_epsilon(toy_copy):
    backend = toy_copy
    assert backend._prediction_type == "v_prediction"
    unet, alphas = backend.pipe.unet, backend.pipe.scheduler.alphas_cumprod.float()
    t = torch.tensor([5, 400, 900])
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn((3, *backend.latent_shape), generator=g)
    cond = backend.encode_prompts(["a circle in red style"] * 3)
    with torch.no_grad():
        raw = unet(x_t, t, encoder_hidden_states=cond.hidden_states).sample
        as_v = backend.predict_noise(x_t, t, cond)
        backend.configure(prediction="eps")
        as_eps = backend.predict_noise(x_t, t, cond)
        assert backend.pipe.scheduler.config.prediction_type == "epsilon"  # the sampler reads it as eps too
        backend.configure(prediction="v")
        forced_v = backend.predict_noise(x_t, t, cond)
        backend.configure()
        back = backend.predict_noise(x_t, t, cond)
    a = alphas[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(as_v, a.sqrt() * raw + (1 - a).sqrt() * x_t)  # eps = sqrt(a) v + sqrt(1 - a) x_t
    torch.testing.assert_close(as_eps, raw)  # eps passed on unchanged
    assert (as_eps - as_v).abs().max() > 1e-2
    torch.testing.assert_close(forced_v, as_v)
    torch.testing.assert_close(back, as_v)
    assert backend.pipe.scheduler is backend._native_scheduler  # configure() restores the model's own


def test_resolution_changes_the_drawn_sets_and_the_users_images(toy_copy):
    backend = toy_copy
    native = backend.latent_shape
    assert backend.image_size == 32 and native[1:] == (16, 16)
    config = tiny_config(resolution=48, retain_images=2, surrogate_images_per_prompt=0)
    own = torch.rand((3, 3, 40, 60), generator=torch.Generator().manual_seed(1)) * 2 - 1
    sets = prepare_sets(backend, config, forget_images=own)
    channels = native[0]
    assert tuple(sets.data.forget_latents.shape) == (3, channels, 24, 24)  # the user's images, fitted to 48 px
    assert tuple(sets.data.retain_latents.shape[1:]) == (channels, 24, 24)  # drawn at 48 px
    assert backend.image_size == 48 and backend.latent_shape == (channels, 24, 24)
    # The next stage with default settings draws at the native size again.
    sets = prepare_sets(backend, tiny_config(retain_images=2, surrogate_images_per_prompt=0, images_per_prompt=1))
    assert tuple(sets.data.forget_latents.shape[1:]) == native
    assert backend.image_size == 32


def test_a_resolution_the_model_cannot_take_is_refused_before_any_work(toy_copy):
    drawn = []
    backend = toy_copy
    backend.sample = lambda *a, **k: drawn.append(1)  # must never be reached
    with pytest.raises(
        SettingsError, match=r"resolution 36 does not fit this model: .*multiple of 8 px \(e.g. 32 or 40\)"
    ):
        prepare_sets(backend, tiny_config(resolution=36))
    assert not drawn and backend.image_size == 32


def test_the_cache_keeps_default_keys_and_separates_resolutions():
    config = tiny_config()
    key = _cache_key("forget", ["a"], 1, 0, config)
    assert _cache_key("forget", ["a"], 1, 0, config.with_settings(resolution=64)) != key
    assert _cache_key("forget", ["a"], 1, 0, config.with_settings(prediction="v")) != key


def test_a_backend_without_configure_runs_only_with_the_defaults():
    backend = FakeBackend({"a red cat": torch.randn(8)}, weight_of_t=lambda t: 1.0)
    assert not hasattr(backend, "configure")
    apply_model_settings(backend)  # the defaults: nothing to do
    with pytest.raises(SettingsError, match="cannot change its resolution or prediction"):
        apply_model_settings(backend, resolution=64)
    with pytest.raises(SettingsError, match="cannot change its resolution or prediction"):
        apply_model_settings(backend, prediction="v")


@pytest.mark.slow
def test_gradient_checkpointing_trains_the_same_adapter_and_is_switched_off_after(toy_backend):
    from spare_core import prepare_sets as prepare
    from spare_core import select_modules, train

    config = tiny_config("yellow", steps=4, timestep_mode="uniform")
    sets = prepare(toy_backend, config)
    saliency = select_modules(toy_backend, config, sets)
    plain = train(toy_backend, config, sets, saliency)
    unet = toy_backend.denoiser()
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.utils.checkpoint, "checkpoint", counting)
        checkpointed = train(toy_backend, config.with_settings(gradient_checkpointing=True), sets, saliency)
    assert calls, "the UNet's blocks were not checkpointed"
    assert not any(getattr(m, "gradient_checkpointing", False) for m in unet.modules())
    assert plain.history.losses == pytest.approx(checkpointed.history.losses, rel=1e-5, abs=1e-7)
    for name, weights in plain.adapter.export().items():
        torch.testing.assert_close(checkpointed.adapter.export()[name].up, weights.up, rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_on_a_model_without_it_is_refused_before_training():
    from spare_core.erasure import gradient_checkpointing

    with pytest.raises(SettingsError, match="gradient_checkpointing is not supported for this model"):
        with gradient_checkpointing(torch.nn.Linear(2, 2), True):
            pass


class _MoveRecorder:
    """Stands in for ``module.to`` and records where each encoder was sent (no accelerator on this machine).

    The modules are shared with the session's toy pipeline: ``monkeypatch`` puts their ``to`` back.
    """

    def __init__(self, backend, monkeypatch):
        self.moves: list[tuple[str, str]] = []
        for name in ("text_encoder", "vae"):
            record = lambda device, name=name: self.moves.append((name, str(device)))  # noqa: E731
            monkeypatch.setattr(getattr(backend.pipe, name), "to", record, raising=False)


def test_training_parks_the_encoders_off_the_accelerator_and_their_next_use_brings_them_back(toy_copy, monkeypatch):
    recorder = _MoveRecorder(toy_copy, monkeypatch)
    toy_copy.park_encoders()  # on the CPU there is nothing to free
    assert recorder.moves == []
    monkeypatch.setattr(type(toy_copy), "device", property(lambda self: torch.device("cuda")))
    toy_copy.park_encoders()
    toy_copy.park_encoders()  # parked once
    assert sorted(recorder.moves) == [("text_encoder", "cpu"), ("vae", "cpu")]
    recorder.moves.clear()
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    toy_copy._unpark_encoders()
    assert sorted(recorder.moves) == [("text_encoder", "cuda"), ("vae", "cuda")]


def test_the_train_stage_parks_the_encoders_before_its_first_step(toy_backend, monkeypatch):
    from spare_core import prepare_sets as prepare
    from spare_core import select_modules, train

    config = tiny_config("yellow", steps=1, timestep_mode="uniform")
    sets = prepare(toy_backend, config)
    saliency = select_modules(toy_backend, config, sets)
    events = []
    monkeypatch.setattr(type(toy_backend), "park_encoders", lambda self: events.append("parked"))
    train(toy_backend, config, sets, saliency, on_event=lambda e: events.append(e.stage))
    assert events[0] == "parked" and "train" in events[1:]
