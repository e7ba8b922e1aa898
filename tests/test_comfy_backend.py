"""The ComfyUI backend (``spare_nodes/comfy_backend.py``) on the ComfyUI test double (``tests/comfy/double``).

What the contract suite cannot say: the ComfyUI backend computes what the
diffusers backend computes on the same weights, an erasure runs through it inside
``torch.inference_mode()``, its LoRA file has the diffusers path's keys, and the
input MODEL is left exactly as it was.
"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_config

from spare_core import CancelToken, build_lora, erase, lora_from_adapter
from spare_core.adapter import SparseLoRA

PROMPT = "a circle in red style"


@pytest.fixture(scope="module")
def comfy_toy_backend(comfy_toy):
    from spare_core.toy.domain import ToyDomain
    from spare_nodes.comfy_backend import ComfyBackend

    model, clip, vae = comfy_toy
    with torch.inference_mode():
        return ComfyBackend(model, clip, vae, domain=ToyDomain(), arch="toy", image_size=32)


def _same_prediction(comfy_backend, diffusers_backend, seed: int, atol: float):
    shape = diffusers_backend.latent_shape
    assert comfy_backend.latent_shape == shape
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn((3, *shape), generator=g), torch.randn((3, *shape), generator=g)
    t = torch.tensor([1, 500, 950])
    with torch.inference_mode():
        x_t = diffusers_backend.add_noise(x0, noise, t)
        # The scheduler's noising agrees (ComfyUI's schedule is float64, diffusers' float32).
        torch.testing.assert_close(comfy_backend.add_noise(x0, noise, t), x_t, atol=2e-5, rtol=1e-5)
        cond = comfy_backend.encode_prompts([PROMPT] * 3)
        torch.testing.assert_close(cond.hidden_states, diffusers_backend.encode_prompts([PROMPT] * 3).hidden_states)
        ours = comfy_backend.predict_noise(x_t, t, cond)
        theirs = diffusers_backend.predict_noise(x_t, t, cond)
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=1e-4)


def test_prediction_equals_the_diffusers_backend_toy_v_prediction(comfy_toy_backend, toy_backend):
    _same_prediction(comfy_toy_backend, toy_backend, seed=0, atol=1e-4)


@pytest.mark.slow
def test_prediction_equals_the_diffusers_backend_sd15_epsilon(comfy_sd15, sd15_backend):
    from spare_nodes.comfy_backend import ComfyBackend

    with torch.inference_mode():
        backend = ComfyBackend(*comfy_sd15, image_size=64)
    assert backend.arch == "sd1"
    _same_prediction(backend, sd15_backend, seed=1, atol=1e-4)


def _forward_hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize(
    "engine_mode",
    [
        "inference",  # the engine called straight inside torch.inference_mode(), as a node runs
        "inference_off",  # the engine called outside inference mode (a script, the CLI)
    ],
)
def test_erasure_through_comfyui_keeps_the_model_and_writes_the_diffusers_keys(
    comfy_double, comfy_toy, toy_backend, engine_mode
):
    import contextlib

    from comfy.utils import unet_to_diffusers

    from spare_core.toy.domain import ToyDomain
    from spare_nodes.comfy_backend import ComfyBackend

    model, clip, vae = comfy_toy
    unet = model.model.diffusion_model
    sampling = model.get_model_object("model_sampling")
    g = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        x = torch.randn((1, 12, 16, 16), generator=g) * 3
        context = clip.encode_from_tokens(clip.tokenize(PROMPT))
        sigma = sampling.sigmas[600].view(1)
        before = comfy_double.model_output(model, x, sigma, context)
        weights = {name: (p, p.clone()) for name, p in unet.named_parameters()}
        assert all(p.is_inference() for p, _ in weights.values())

        backend = ComfyBackend(model, clip, vae, domain=ToyDomain(), arch="toy", image_size=32)
        config = tiny_config()
        with torch.inference_mode(False) if engine_mode == "inference_off" else contextlib.nullcontext():
            result = erase(backend, config)
        assert all(torch.isfinite(torch.tensor(result.history.losses)))
        lora = build_lora(result, backend)

        # The input MODEL: no patches, the same weight objects with the same values, no hooks, the same output.
        assert model.patches == {}
        assert _forward_hooks(unet) == 0
        for name, p in unet.named_parameters():
            original, value = weights[name]
            assert p is original, name
            assert torch.equal(p, value), name
        after = comfy_double.model_output(model, x, sigma, context)
        torch.testing.assert_close(after, before, atol=0, rtol=0)

    # The diffusers path on the same modules writes the same keys. CompVis -> diffusers from the double's
    # own table (ComfyUI's unet_to_diffusers), not from the engine's naming code.
    to_diffusers = {
        v[: -len(".weight")]: k[: -len(".weight")]
        for k, v in unet_to_diffusers(model.model.model_config.unet_config).items()
        if k.endswith(".weight")
    }
    selected = result.selected_modules
    assert selected and all(name in to_diffusers for name in selected)
    diffusers_adapter = SparseLoRA(toy_backend.denoiser(), [to_diffusers[n] for n in selected], rank=config.rank)
    diffusers_lora = lora_from_adapter(diffusers_adapter, toy_backend, config)
    assert sorted(lora.tensors) == sorted(diffusers_lora.tensors)
    assert lora.metadata["ss_base_model_version"] == diffusers_lora.metadata["ss_base_model_version"]


def test_a_comfyui_interrupt_stops_the_erasure_and_leaves_no_hook(comfy_toy_backend):
    import comfy.model_management as mm

    unet = comfy_toy_backend.denoiser()
    calls = []

    def host_check():
        calls.append(1)
        if len(calls) == 3:
            mm.interrupt_current_processing()
        mm.throw_exception_if_processing_interrupted()

    with torch.inference_mode(), pytest.raises(mm.InterruptProcessingException):
        erase(comfy_toy_backend, tiny_config(), cancel=CancelToken(host_check))
    assert _forward_hooks(unet) == 0
    assert not mm.processing_interrupted()


def test_sample_uses_each_seed_and_calls_on_step(comfy_toy_backend):
    steps = []
    with torch.inference_mode():
        images = comfy_toy_backend.sample(
            [PROMPT, PROMPT], [1, 2], steps=3, guidance_scale=5.0, on_step=lambda: steps.append(1)
        )
    assert len(steps) == 3 and images.shape == (2, 3, 32, 32)
    assert (images[0] - images[1]).abs().max() > 1e-3  # two seeds, two images


def test_sample_runs_comfyuis_own_sampling_with_the_chosen_sampler(comfy_toy_backend, monkeypatch):
    import comfy.sample

    calls, real = [], comfy.sample.sample

    def recording(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, *args, **kwargs):
        calls.append((sampler_name, scheduler, steps, cfg, noise.shape[0], positive[0][0].shape))
        return real(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, *args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", recording)
    monkeypatch.setattr(comfy_toy_backend, "scheduler", "simple")
    other = "a star image in blue style"
    with torch.inference_mode():
        images = comfy_toy_backend.sample([PROMPT, PROMPT, other], [1, 2, 3], steps=2, guidance_scale=4.0)
    assert images.shape == (3, 3, 32, 32)
    # One call per run of equal prompts (ComfyUI conditions a whole batch on one prompt).
    assert [c[:5] for c in calls] == [("euler", "simple", 2, 4.0, 2), ("euler", "simple", 2, 4.0, 1)]
    with torch.inference_mode():
        alone = comfy_toy_backend.sample([other], [3], steps=2, guidance_scale=4.0)
    assert torch.allclose(alone[0], images[2], atol=1e-5)  # each image from its own seed


def test_layer_names_and_arch(comfy_toy_backend, comfy_double):
    from spare_nodes.comfy_backend import detect_arch

    table = comfy_toy_backend.lora_layer_table()
    # Both spellings of one module resolve to its CompVis name.
    assert table["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"] == (
        "input_blocks.3.1.transformer_blocks.0.attn2.to_k"
    )
    assert table["lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k"] == (
        "input_blocks.3.1.transformer_blocks.0.attn2.to_k"
    )
    assert detect_arch({"context_dim": 768}) == "sd1" and detect_arch({"context_dim": 1024}) == "sd2"
    assert detect_arch({"context_dim": 2048, "adm_in_channels": 2816}) == "sdxl"  # handled since SDXL support
    with pytest.raises(ValueError):
        detect_arch({"context_dim": 64})  # the toy: the caller names it


# ---------------------------------------------------------------------------- SDXL (ComfyUI's adm conditioning)


@pytest.fixture
def comfy_sdxl_backend(comfy_sdxl):
    from spare_nodes.comfy_backend import ComfyBackend

    model, clip, vae = comfy_sdxl
    with torch.inference_mode():
        return ComfyBackend(model, clip, vae, arch="sdxl", image_size=64)


def test_sdxl_is_detected_from_adm_and_context_width():
    from spare_nodes.comfy_backend import detect_arch

    assert detect_arch({"context_dim": 2048, "adm_in_channels": 2816}) == "sdxl"
    with pytest.raises(ValueError, match="only SDXL"):
        detect_arch({"context_dim": 1024, "adm_in_channels": 1536})  # SD 2.x unCLIP


def test_sdxl_conditioning_is_comfyuis_adm_of_the_pooled_output_and_the_drawing_size(comfy_sdxl_backend, comfy_sdxl):
    backend, (model, clip, _) = comfy_sdxl_backend, comfy_sdxl
    assert backend.conditioning_extras == ("y",)
    y = backend.encode_prompts(["a circle in red style"]).extra["y"]
    _, pooled = clip.encode_from_tokens(clip.tokenize("a circle in red style"), return_pooled=True)
    sizes = dict(width=64, height=64, crop_w=0, crop_h=0, target_width=64, target_height=64)
    torch.testing.assert_close(y, model.model.encode_adm(pooled_output=pooled, **sizes))
    assert y.shape[1] == model.model.model_config.unet_config["adm_in_channels"]
    backend.configure(resolution=96)
    moved = backend.encode_prompts(["a circle in red style"]).extra["y"]
    torch.testing.assert_close(
        moved, model.model.encode_adm(pooled_output=pooled, **{k: (96 if v else 0) for k, v in sizes.items()})
    )
    assert backend.latent_shape == (4, 12, 12) and tuple(backend.sample(["a dog"], [0], 1, 2.0).shape) == (1, 3, 96, 96)
    with pytest.raises(engine_settings_error(), match=r"multiple of 32 px \(e.g. 96 or 128\)"):
        backend.configure(resolution=100)
    with pytest.raises(engine_settings_error(), match="ModelSamplingDiscrete"):
        backend.configure(prediction="v")
    backend.configure(prediction="eps")  # what the MODEL says: accepted
    assert backend.image_size == 64


def test_sdxl_sampling_gives_comfyuis_sampler_the_same_sizes(comfy_sdxl_backend, monkeypatch):
    import comfy.sample

    seen = []
    real = comfy.sample.sample

    def spy(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, *args, **kwargs):
        seen.append((positive[0][1], negative[0][1]))
        return real(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, *args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", spy)
    comfy_sdxl_backend.sample(["a dog"], [1], 1, 2.0)
    for info in seen[0]:
        assert "pooled_output" in info
        assert (info["width"], info["height"], info["target_width"], info["crop_w"]) == (64, 64, 64, 0)


def engine_settings_error():
    from spare_core import SettingsError

    return SettingsError
