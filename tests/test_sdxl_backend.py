"""The SDXL backend against diffusers' own SDXL pipeline, its model settings, and a whole tiny erasure on it.

The contract itself is checked in ``tests/test_backend_contract.py`` (the ``sdxl`` case); the model is the
reduced-width SDXL-shaped pipeline ``sdxl_pipe`` of ``conftest.py``.
"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_config

from spare_core import SettingsError, build_lora, erase, read_lora
from spare_core.architectures import get_architecture


@pytest.fixture
def sdxl(sdxl_pipe):
    from spare_core.backends.sdxl_backend import SDXLBackend

    backend = SDXLBackend(sdxl_pipe)
    yield backend
    backend.configure()  # the shared pipeline gets its own scheduler back


def test_conditioning_is_what_the_pipeline_itself_encodes(sdxl, sdxl_pipe):
    prompts = ["a circle in red style", "a square in blue style"]
    cond = sdxl.encode_prompts(prompts)
    embeds, _, pooled, _ = sdxl_pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
    torch.testing.assert_close(cond.hidden_states, embeds)
    assert cond.hidden_states.shape[-1] == sdxl_pipe.unet.config.cross_attention_dim  # both encoders, side by side
    torch.testing.assert_close(cond.extra["text_embeds"], pooled)
    time_ids = sdxl_pipe._get_add_time_ids(
        (64, 64), (0, 0), (64, 64), dtype=embeds.dtype, text_encoder_projection_dim=32
    )
    torch.testing.assert_close(cond.extra["time_ids"], time_ids.repeat(2, 1))


def test_sampling_is_the_pipelines_own_on_the_seeds_noise(sdxl, sdxl_pipe):
    images = sdxl.sample(["a circle in red style"], [5], steps=2, guidance_scale=4.0)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    own = sdxl_pipe(
        prompt=["a circle in red style"], latents=noise, num_inference_steps=2, guidance_scale=4.0, output_type="pt"
    ).images
    torch.testing.assert_close(images, own.float() * 2 - 1)


def test_resolution_sets_the_drawing_size_and_the_size_conditioning(sdxl):
    sdxl.configure(resolution=96)
    assert sdxl.image_size == 96 and sdxl.latent_shape == (4, 12, 12)
    assert sdxl.encode_prompts(["a dog"]).extra["time_ids"].tolist() == [[96, 96, 0, 0, 96, 96]]
    images = sdxl.sample(["a dog"], [1], steps=1, guidance_scale=2.0)
    assert tuple(images.shape) == (1, 3, 96, 96)
    with pytest.raises(SettingsError, match=r"resolution 80 does not fit.*multiple of 32 px \(e.g. 64 or 96\)"):
        sdxl.configure(resolution=80)
    sdxl.configure()
    assert sdxl.image_size == 64 and sdxl.encode_prompts(["a dog"]).extra["time_ids"][0, 0] == 64


def test_a_pipeline_without_text_time_is_refused(toy_pipe):
    from spare_core.backends.sdxl_backend import SDXLBackend

    with pytest.raises(ValueError, match="not SDXL's 'text_time'"):
        SDXLBackend(toy_pipe)


def test_a_tiny_erasure_writes_a_compvis_spelled_sdxl_lora(sdxl, tmp_path):
    # Every cross-attention key and value of the model (34) may carry the adapter, so that every part of the
    # UNet (input, middle and output blocks) shows up in the file.
    config = tiny_config("yellow", "plain", module_scope="text", top_k=40, retain_images=4)
    result = erase(sdxl, config)
    lora = build_lora(result, sdxl)
    path = lora.write(tmp_path / "erased.safetensors")
    back = read_lora(path)
    layers = back.layers()
    assert len(layers) == len(result.selected_modules) == 34
    for prefix in ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"):
        assert any(layer.startswith(prefix) for layer in layers), prefix
    assert not any(part in layer for layer in layers for part in ("down_blocks", "mid_block", "up_blocks"))
    assert back.metadata["ss_base_model_version"] == get_architecture("sdxl").base_model_version
    assert back.config().resolution == 0 and back.config().prediction == ""
    # The file applies to the model again, on the same modules.
    adapter = back.adapter(sdxl)
    assert sorted(adapter.module_names) == sorted(result.selected_modules)
