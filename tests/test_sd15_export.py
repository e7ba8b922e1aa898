"""An SPARE LoRA for an SD1.5-shaped UNet: hand-written key names, and diffusers' own loader agrees with us.

The UNet is the one of the session's SD1.5-shaped pipeline (``sd15_pipe`` in
``conftest.py``: the SD1.5 config with random weights, no download, built once
per session, about 10 s and 3.4 GB) and runs at 8 x 8 latents.
"""

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors import safe_open

from spare_core import ConceptPair, ErasureConfig, SparseLoRA, lora_from_adapter, read_lora

pytestmark = pytest.mark.slow  # builds the SD1.5-shaped UNet (3.4 GB) once per session

#: Modules saliency may pick, with the kohya layer names written out by hand (kohya sd-scripts
#: naming for SD1: diffusers module path, dots replaced by underscores, prefix lora_unet_).
EXPECTED_LAYERS = {
    "conv_in": "lora_unet_conv_in",
    "time_embedding.linear_1": "lora_unet_time_embedding_linear_1",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v": "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v",
    "mid_block.resnets.0.conv1": "lora_unet_mid_block_resnets_0_conv1",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0": "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0",
}
#: The same modules as Automatic1111 and ComfyUI name them internally (compvis), for the record of
#: what their diffusers-name conversions must produce (ComfyUI unet_to_diffusers: down block b, layer i ->
#: input_blocks 1 + 3b + i; mid_block -> middle_block; up block b, layer i -> output_blocks 3b + i).
EXPECTED_COMPVIS = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v": "input_blocks.1.1.transformer_blocks.0.attn2.to_v",
    "mid_block.resnets.0.conv1": "middle_block.0.in_layers.2",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0": "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0",
}


@pytest.fixture(scope="module")
def sd15_unet(sd15_pipe):
    """The session's SD1.5-shaped UNet (shared with the backend contract tests), frozen."""
    unet = sd15_pipe.unet
    unet.requires_grad_(False)
    return unet


def _adapter(unet) -> SparseLoRA:
    adapter = SparseLoRA(unet, list(EXPECTED_LAYERS), rank=4, alpha=4.0, seed=1)
    with torch.no_grad():
        for b in adapter.branches:
            b.up.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    return adapter


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500]), torch.randn(1, 77, 768, generator=g)


def test_exported_keys_are_kohya_names_and_nothing_else(sd15_unet, sd15_backend, tmp_path):
    path = tmp_path / "erase.safetensors"
    config = ErasureConfig(concepts=[ConceptPair("Van Gogh", "an impressionist painter")], base_model="sd15")
    lora_from_adapter(_adapter(sd15_unet), sd15_backend, config, dtype=torch.float32).write(path)
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        metadata = f.metadata()
    expected = {
        f"{layer}.{part}"
        for layer in EXPECTED_LAYERS.values()
        for part in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    assert keys == expected
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["ss_network_module"] == "networks.lora"
    assert ErasureConfig.from_json(metadata["spare_config"]) == config


def test_compvis_names_match_the_hosts_rules(sd15_unet):
    from spare_core.lora_naming import compvis_to_diffusers, diffusers_to_compvis

    for diffusers_name, compvis_name in EXPECTED_COMPVIS.items():
        assert diffusers_to_compvis(diffusers_name, sd15_unet.config) == compvis_name
        assert compvis_to_diffusers(compvis_name, sd15_unet.config) == diffusers_name


def test_diffusers_loader_gives_the_same_prediction_as_our_adapter(sd15_unet, sd15_backend, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    from spare_core.toy.text import build_tokenizer
    from spare_core.toy.vae import PixelShuffleVAE

    adapter = _adapter(sd15_unet)
    x, t, c = _inputs()
    with torch.no_grad():
        base = sd15_unet(x, t, c).sample
        with adapter.applied():
            ours = sd15_unet(x, t, c).sample
    assert (ours - base).abs().max() > 1e-3  # the adapter does change the prediction
    path = tmp_path / "erase.safetensors"
    config = ErasureConfig(concepts=[ConceptPair("Van Gogh", "a painter")], base_model="sd15")
    lora_from_adapter(adapter, sd15_backend, config, dtype=torch.float32).write(path)

    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
        )
    )
    pipe = StableDiffusionPipeline(
        vae=PixelShuffleVAE(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=sd15_unet,
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    try:
        pipe.load_lora_weights(str(path))  # diffusers' own loader, no extra arguments
        wrapped = {name for name, m in sd15_unet.named_modules() if hasattr(m, "lora_A")}
        assert wrapped == set(EXPECTED_LAYERS)  # no unexpected and no missing module
        with torch.no_grad():
            theirs = sd15_unet(x, t, c).sample
        assert (theirs - ours).abs().max() < 1e-4
    finally:
        pipe.unload_lora_weights()
    with torch.no_grad():
        assert torch.allclose(sd15_unet(x, t, c).sample, base, atol=1e-6)


def test_file_loads_back_into_our_adapter(sd15_unet, sd15_backend, tmp_path):
    adapter = _adapter(sd15_unet)
    path = tmp_path / "erase.safetensors"
    config = ErasureConfig(concepts=[ConceptPair("a", "b")], base_model="sd15")
    lora_from_adapter(adapter, sd15_backend, config, dtype=torch.float32).write(path)
    loaded = read_lora(path).adapter(sd15_backend)
    assert set(loaded.module_names) == set(EXPECTED_LAYERS)
    for name in EXPECTED_LAYERS:
        assert torch.equal(loaded.branch(name).up, adapter.branch(name).up)
        assert torch.equal(loaded.branch(name).down, adapter.branch(name).down)
