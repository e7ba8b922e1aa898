"""SPARE reads plain kohya LoRAs made by other tools, and refuses other adapter formats by name.

The files here are written as other tools write them: ``safetensors.torch.save_file``,
layer names typed out by hand in either spelling (diffusers-style, as kohya writes
SD1/SD2 files, or CompVis, as kohya writes SDXL files), ``alpha`` present or missing,
conv layers with 4-D ``lora_down`` (kohya's conv LoRA), text-encoder layers, and no
SPARE metadata. What the adapter does is checked against weights merged by hand:
``W + (alpha / r) * up @ down`` (alpha missing: alpha = r), the rule ComfyUI
(``comfy/weight_adapter/lora.py``) and Automatic1111 (``extensions-builtin/Lora/network_lora.py``)
apply. The UNets are tiny, with the block structure of SD1.x, SD2.x and SDXL.
"""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from unet_configs import SD1_LIKE, SD2_LIKE, SDXL_LIKE

from spare_core import LoraFileError, read_lora
from spare_core.lora_naming import kohya_layer_table

ROOT = Path(__file__).resolve().parents[1]


# kohya layer name (either spelling) -> the diffusers module it must land on, written by hand.
SD1_DIFFUSERS_KEYS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    ),
    "lora_unet_down_blocks_0_attentions_0_proj_in": "down_blocks.0.attentions.0.proj_in",  # 1x1 conv in SD1
    "lora_unet_down_blocks_1_resnets_0_conv1": "down_blocks.1.resnets.0.conv1",  # 3x3 conv: kohya conv LoRA
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q": (
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
    ),
    "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0": (
        "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0"
    ),
}
SD1_COMPVIS_KEYS = {
    "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k": (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    ),
    "lora_unet_input_blocks_1_1_proj_in": "down_blocks.0.attentions.0.proj_in",
    "lora_unet_input_blocks_4_0_in_layers_2": "down_blocks.1.resnets.0.conv1",
    "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q": "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
    "lora_unet_output_blocks_11_1_transformer_blocks_0_attn2_to_out_0": (
        "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0"
    ),
}
SDXL_COMPVIS_KEYS = {
    "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k": (
        "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"
    ),
    "lora_unet_output_blocks_2_1_proj_out": "up_blocks.0.attentions.2.proj_out",
    "lora_unet_label_emb_0_0": "add_embedding.linear_1",
    "lora_unet_input_blocks_2_0_out_layers_3": "down_blocks.0.resnets.1.conv2",
    "lora_unet_output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
}
SDXL_DIFFUSERS_KEYS = {
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k": (
        "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"
    ),
    "lora_unet_up_blocks_0_attentions_2_proj_out": "up_blocks.0.attentions.2.proj_out",
    "lora_unet_add_embedding_linear_1": "add_embedding.linear_1",
    "lora_unet_down_blocks_0_resnets_1_conv2": "down_blocks.0.resnets.1.conv2",
    "lora_unet_up_blocks_0_upsamplers_0_conv": "up_blocks.0.upsamplers.0.conv",
}
TE_SD1 = ["lora_te_text_model_encoder_layers_0_self_attn_k_proj", "lora_te_text_model_encoder_layers_0_mlp_fc1"]
TE_SDXL = ["lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "lora_te2_text_model_encoder_layers_1_mlp_fc2"]


class UnetBackend:
    """The part of a backend a LoRA needs: its architecture, its UNet and the kohya lookup table."""

    def __init__(self, unet: UNet2DConditionModel, arch: str):
        self.unet, self.arch = unet, arch
        self.device = unet.device

    def denoiser(self) -> UNet2DConditionModel:
        return self.unet

    def lora_layer_table(self):
        adaptable = [n for n, m in self.unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        return kohya_layer_table(adaptable, self.unet.config)


def _unet(config: dict) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**config).eval().requires_grad_(False)


def _foreign_tensors(unet, keys: dict[str, str], seed: int = 0, alphas=(None, 2.0, 0.5)) -> dict[str, torch.Tensor]:
    """Rank-2 LoRA tensors named ``keys``, shaped as kohya shapes them; alpha cycles through ``alphas`` (None: none)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (layer, module_name) in enumerate(keys.items()):
        module = unet.get_submodule(module_name)
        out_f, in_f, *kernel = module.weight.shape
        tensors[f"{layer}.lora_down.weight"] = 0.2 * torch.randn(2, in_f, *kernel, generator=g)
        tensors[f"{layer}.lora_up.weight"] = 0.2 * torch.randn(out_f, 2, *([1, 1] if kernel else []), generator=g)
        alpha = alphas[i % len(alphas)]
        if alpha is not None:
            tensors[f"{layer}.alpha"] = torch.tensor(alpha)
    return tensors


def _text_encoder_tensors(layers: list[str]) -> dict[str, torch.Tensor]:
    out = {}
    for layer in layers:
        out[f"{layer}.lora_down.weight"] = torch.ones(2, 8)
        out[f"{layer}.lora_up.weight"] = torch.ones(8, 2)
        out[f"{layer}.alpha"] = torch.tensor(1.0)
    return out


def _merged(unet, tensors: dict[str, torch.Tensor], keys: dict[str, str]) -> UNet2DConditionModel:
    """A copy of ``unet`` with every LoRA merged into its weight by hand: W + (alpha / r) up @ down."""
    merged = copy.deepcopy(unet)
    for layer, module_name in keys.items():
        down, up = tensors[f"{layer}.lora_down.weight"], tensors[f"{layer}.lora_up.weight"]
        rank = down.shape[0]
        alpha = float(tensors[f"{layer}.alpha"]) if f"{layer}.alpha" in tensors else float(rank)
        weight = merged.get_submodule(module_name).weight
        weight += (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    return merged


def _inputs(unet) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=g)
    c = torch.randn(1, 5, 8, generator=g)
    kwargs = {}
    if unet.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 8, generator=g), "time_ids": torch.zeros(1, 6)}
    return (x, torch.tensor([400]), c), kwargs


def _out(unet, inputs) -> torch.Tensor:
    args, kwargs = inputs
    with torch.no_grad():
        return unet(*args, **kwargs).sample


def _write(tmp_path, name: str, tensors, metadata=None) -> Path:
    path = tmp_path / name
    save_file(tensors, path, metadata=metadata)
    return path


CASES = {
    "sd1-diffusers": (SD1_LIKE, "sd1", SD1_DIFFUSERS_KEYS, TE_SD1),
    "sd1-compvis": (SD1_LIKE, "sd1", SD1_COMPVIS_KEYS, TE_SD1),
    "sd2-diffusers": (SD2_LIKE, "sd2", SD1_DIFFUSERS_KEYS, TE_SD1),
    "sdxl-compvis": (SDXL_LIKE, "sdxl", SDXL_COMPVIS_KEYS, TE_SDXL),
    "sdxl-diffusers": (SDXL_LIKE, "sdxl", SDXL_DIFFUSERS_KEYS, TE_SDXL),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_plain_kohya_file_from_another_tool_applies_like_merged_weights(case, tmp_path, caplog):
    config, arch, keys, te_layers = CASES[case]
    unet = _unet(config)
    tensors = _foreign_tensors(unet, keys)
    path = _write(tmp_path, "theirs.safetensors", tensors | _text_encoder_tensors(te_layers))
    inputs = _inputs(unet)
    base = _out(unet, inputs)
    expected = _out(_merged(unet, tensors, keys), inputs)
    assert (expected - base).abs().max() > 1e-3  # the LoRA does change the prediction

    lora = read_lora(path)
    assert set(lora.layers()) == set(keys) and set(lora.text_encoder_layers()) == set(te_layers)
    with caplog.at_level(logging.WARNING, logger="spare_core.lora"):
        adapter = lora.adapter(UnetBackend(unet, arch))
    assert f"{len(te_layers)} text-encoder layer(s) not applied" in caplog.text
    assert all(layer in caplog.text for layer in te_layers)
    assert sorted(adapter.module_names) == sorted(keys.values())
    with adapter.applied():
        ours = _out(unet, inputs)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(_out(unet, inputs), base)


def test_both_spellings_of_the_same_layers_give_the_same_adapter(tmp_path):
    unet = _unet(SD1_LIKE)
    diffusers_file = _foreign_tensors(unet, SD1_DIFFUSERS_KEYS)
    renamed = dict(zip(SD1_DIFFUSERS_KEYS, SD1_COMPVIS_KEYS, strict=True))
    compvis_file = {}
    for key, value in diffusers_file.items():
        layer, _, part = key.partition(".")
        compvis_file[f"{renamed[layer]}.{part}"] = value
    backend = UnetBackend(unet, "sd1")
    a = read_lora(_write(tmp_path, "a.safetensors", diffusers_file)).adapter(backend)
    b = read_lora(_write(tmp_path, "b.safetensors", compvis_file)).adapter(backend)
    for name in SD1_DIFFUSERS_KEYS.values():
        assert torch.equal(a.branch(name).down, b.branch(name).down) and a.branch(name).alpha == b.branch(name).alpha


def test_missing_alpha_means_alpha_equals_rank(tmp_path):
    unet = _unet(SD1_LIKE)
    tensors = _foreign_tensors(unet, SD1_DIFFUSERS_KEYS, alphas=(None,))
    adapter = read_lora(_write(tmp_path, "noalpha.safetensors", tensors)).adapter(UnetBackend(unet, "sd1"))
    assert {adapter.branch(n).alpha for n in SD1_DIFFUSERS_KEYS.values()} == {2.0}
    assert {adapter.branch(n).scale for n in SD1_DIFFUSERS_KEYS.values()} == {1.0}


@pytest.mark.parametrize(("config", "layer", "module_name", "down_shape"), [
    (SD2_LIKE, "lora_unet_down_blocks_0_attentions_0_proj_in", "down_blocks.0.attentions.0.proj_in", (2, 8, 1, 1)),
    (SD1_LIKE, "lora_unet_down_blocks_0_attentions_0_proj_in", "down_blocks.0.attentions.0.proj_in", (2, 8)),
])  # fmt: skip
def test_linear_and_one_by_one_conv_shapes_are_interchangeable(tmp_path, config, layer, module_name, down_shape):
    """A 1x1-conv LoRA on a Linear proj_in (an SD1-minded tool on SD2) and the reverse apply as the same matrix."""
    unet = _unet(config)
    g = torch.Generator().manual_seed(3)
    down = 0.3 * torch.randn(*down_shape, generator=g)
    up = 0.3 * torch.randn(8, 2, *down_shape[2:], generator=g)
    tensors = {f"{layer}.lora_down.weight": down, f"{layer}.lora_up.weight": up}
    inputs = _inputs(unet)
    expected = _out(_merged(unet, tensors, {layer: module_name}), inputs)
    adapter = read_lora(_write(tmp_path, "x.safetensors", tensors)).adapter(UnetBackend(unet, "sd1"))
    with adapter.applied():
        torch.testing.assert_close(_out(unet, inputs), expected, rtol=1e-4, atol=1e-5)


def test_describe_lists_the_skipped_text_encoder_layers(tmp_path):
    unet = _unet(SD1_LIKE)
    tensors = _foreign_tensors(unet, SD1_DIFFUSERS_KEYS) | _text_encoder_tensors(TE_SD1)
    metadata = {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1", "ss_network_dim": "2"}
    info = read_lora(_write(tmp_path, "kohya.safetensors", tensors, metadata)).describe()
    assert info["skipped_text_encoder_layers"] == [
        "lora_te_text_model_encoder_layers_0_mlp_fc1",
        "lora_te_text_model_encoder_layers_0_self_attn_k_proj",
    ]
    assert [m["layer"] for m in info["modules"]] == sorted(SD1_DIFFUSERS_KEYS)
    assert info["settings"] is None and info["arch"] == "sd_v1"


def test_spare_inspect_lists_the_skipped_text_encoder_layers(tmp_path, capsys):
    from spare_core.cli import main

    unet = _unet(SD1_LIKE)
    tensors = _foreign_tensors(unet, SD1_DIFFUSERS_KEYS) | _text_encoder_tensors(TE_SD1)
    assert main(["inspect", str(_write(tmp_path, "kohya.safetensors", tensors))]) == 0
    out = capsys.readouterr().out
    assert "text-encoder layers (2; not applied by SPARE's adapter" in out
    assert "  lora_te_text_model_encoder_layers_0_mlp_fc1\n" in out


def test_a_text_encoder_only_file_is_read_but_has_nothing_for_the_unet(tmp_path):
    lora = read_lora(_write(tmp_path, "te_only.safetensors", _text_encoder_tensors(TE_SD1)))
    assert lora.layers() == {} and lora.describe()["skipped_text_encoder_layers"] == sorted(TE_SD1)
    with pytest.raises(LoraFileError, match="te_only.safetensors holds text-encoder layers only"):
        lora.adapter(UnetBackend(_unet(SD1_LIKE), "sd1"))


def test_a_file_for_another_architecture_is_refused_by_its_kohya_metadata(tmp_path):
    unet = _unet(SD1_LIKE)
    path = _write(tmp_path, "xl.safetensors", _foreign_tensors(unet, SD1_DIFFUSERS_KEYS),
                  {"ss_base_model_version": "sdxl_base_v1-0"})  # fmt: skip
    with pytest.raises(LoraFileError, match="xl.safetensors is a LoRA for SDXL"):
        read_lora(path).adapter(UnetBackend(unet, "sd1"))


K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
P = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2"
FOREIGN = {
    "LoHa": (
        {f"{K}.hada_w1_a": torch.ones(8, 2), f"{K}.hada_w1_b": torch.ones(2, 8), f"{K}.hada_w2_a": torch.ones(8, 2),
         f"{K}.hada_w2_b": torch.ones(2, 8), f"{K}.alpha": torch.tensor(2.0)},
        "loha.safetensors is a LoHa file (hada_* keys)",
    ),
    "LoKr": (
        {f"{K}.lokr_w1": torch.ones(2, 2), f"{K}.lokr_w2": torch.ones(4, 4), f"{K}.alpha": torch.tensor(1.0)},
        "lokr.safetensors is a LoKr file (lokr_* keys)",
    ),
    "DoRA": (
        {f"{K}.lora_down.weight": torch.ones(2, 8), f"{K}.lora_up.weight": torch.ones(8, 2),
         f"{K}.alpha": torch.tensor(2.0), f"{K}.dora_scale": torch.ones(1, 8)},
        "dora.safetensors is a DoRA file (dora_scale keys)",
    ),
    "LoCon-Tucker": (
        {"lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight": torch.ones(2, 8, 1, 1),
         "lora_unet_down_blocks_1_resnets_0_conv1.lora_mid.weight": torch.ones(2, 2, 3, 3),
         "lora_unet_down_blocks_1_resnets_0_conv1.lora_up.weight": torch.ones(16, 2, 1, 1)},
        "locon-tucker.safetensors is a LoCon file with a Tucker core (lora_mid keys)",
    ),
    "PEFT": (
        {f"{P}.to_k.lora_A.weight": torch.ones(2, 8), f"{P}.to_k.lora_B.weight": torch.ones(8, 2)},
        "peft.safetensors is a PEFT-style file (lora_A/lora_B keys)",
    ),
    "diffusers-processor": (
        {f"{P}.processor.to_k_lora.down.weight": torch.ones(2, 8),
         f"{P}.processor.to_k_lora.up.weight": torch.ones(8, 2)},
        "diffusers-processor.safetensors is a diffusers attention-processor file",
    ),
}  # fmt: skip


@pytest.mark.parametrize("fmt", list(FOREIGN))
def test_other_adapter_formats_are_refused_by_name(fmt, tmp_path):
    tensors, message = FOREIGN[fmt]
    path = _write(tmp_path, f"{fmt.lower()}.safetensors", tensors)
    with pytest.raises(LoraFileError, match=re.escape(message)) as info:
        read_lora(path)
    assert "SPARE applies plain LoRA (lora_down/lora_up) only" in str(info.value)


# ---------------------------------------------------------------- the ComfyUI node


@pytest.fixture(scope="module")
def apply_node(comfy_pack):
    """Apply Sparse LoRA, loaded the way ComfyUI loads the pack."""
    return comfy_pack["SPARE_ApplySparseLoRA"]


TOY_KEYS = {
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    ),
}


@pytest.mark.parametrize("with_clip", [False, True])
def test_the_apply_node_hands_text_encoder_layers_to_comfyui_only_with_a_clip(
    with_clip, apply_node, comfy_double, comfy_toy, toy_pipe, monkeypatch, caplog
):
    import comfy.sd
    import folder_paths

    model, clip, _ = comfy_toy
    tensors = _foreign_tensors(toy_pipe.unet, TOY_KEYS) | _text_encoder_tensors(TE_SD1)
    loras = Path(folder_paths.get_folder_paths("loras")[0])
    save_file(tensors, loras / "other_tool.safetensors")
    handed = {}
    real = comfy.sd.load_lora_for_models

    def spy(model, clip, lora, strength_model, strength_clip):
        handed.update(lora)
        return real(model, clip, lora, strength_model, strength_clip)

    monkeypatch.setattr(comfy.sd, "load_lora_for_models", spy)
    with caplog.at_level(logging.WARNING):
        comfy_double.execute_node(apply_node, model=model, clip=clip if with_clip else None,
                                  lora_name="other_tool.safetensors", strength=1.0)  # fmt: skip
    unet_keys = {k for k in tensors if k.startswith("lora_unet_")}
    if with_clip:
        assert set(handed) == set(tensors)  # ComfyUI's own loader applies the text-encoder layers to the CLIP
        assert "not applied (connect a CLIP" not in caplog.text
    else:
        assert set(handed) == unet_keys
        assert "2 text-encoder layer(s) not applied (connect a CLIP to apply them)" in caplog.text
        assert "lora key not loaded" not in caplog.text


# ---------------------------------------------------------------- diffusers loads our files and agrees with us


class ExportBackend(UnetBackend):
    def lora_layer_names(self, module_names):
        from spare_core.lora_naming import export_layer_names

        return export_layer_names(module_names, self.arch, self.unet.config)


def _trained_adapter(unet, names):
    from spare_core import SparseLoRA

    rows = unet.get_submodule(names[0]).weight.shape[0]
    mask = (torch.arange(rows) % 2).float()  # a saliency row mask on the first module: folded into up on export
    adapter = SparseLoRA(unet, names, rank=2, alpha=3.0, row_masks={names[0]: mask}, seed=1)
    with torch.no_grad():
        for i, branch in enumerate(adapter.branches):
            branch.up.normal_(0, 0.3, generator=torch.Generator().manual_seed(10 + i))
    return adapter


def _write_ours(adapter, unet, arch, path) -> Path:
    from spare_core import ConceptPair, ErasureConfig, lora_from_adapter

    config = ErasureConfig(concepts=[ConceptPair("a cat", "an animal")], base_model=arch)
    lora_from_adapter(adapter, ExportBackend(unet, arch), config, dtype=torch.float32).write(path)
    return path


def _tiny_text_encoder(projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from spare_core.toy.text import build_tokenizer

    tokenizer = build_tokenizer()
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=2, projection_dim=8)  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval(), tokenizer


SD2_MODULES = [
    "down_blocks.0.attentions.0.proj_in",  # Linear in SD2
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.1.resnets.0.conv1",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
    "up_blocks.1.upsamplers.0.conv",
    "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0",
]
SDXL_MODULES = [
    "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_v",
    "down_blocks.2.attentions.1.proj_out",
    "down_blocks.0.resnets.1.conv2",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
    "up_blocks.0.upsamplers.0.conv",
    "add_embedding.linear_1",
]


def test_stable_diffusion_pipeline_loads_an_sd2_file_and_predicts_like_our_adapter(tmp_path):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    unet = _unet(SD2_LIKE)
    adapter = _trained_adapter(unet, SD2_MODULES)
    inputs = _inputs(unet)
    base = _out(unet, inputs)
    with adapter.applied():
        ours = _out(unet, inputs)
    assert (ours - base).abs().max() > 1e-3
    path = _write_ours(adapter, unet, "sd2", tmp_path / "sd2.safetensors")
    text_encoder, tokenizer = _tiny_text_encoder()
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4), text_encoder=text_encoder,
        tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(steps_offset=1, clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.load_lora_weights(str(path))  # diffusers' own loader, no extra arguments
    assert {n for n, m in unet.named_modules() if hasattr(m, "lora_A")} == set(SD2_MODULES)
    torch.testing.assert_close(_out(unet, inputs), ours, rtol=1e-4, atol=1e-5)
    pipe.unload_lora_weights()
    assert torch.equal(_out(unet, inputs), base)


def test_stable_diffusion_xl_pipeline_loads_an_sdxl_file_and_predicts_like_our_adapter(tmp_path):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline

    unet = _unet(SDXL_LIKE)
    adapter = _trained_adapter(unet, SDXL_MODULES)
    inputs = _inputs(unet)
    base = _out(unet, inputs)
    with adapter.applied():
        ours = _out(unet, inputs)
    assert (ours - base).abs().max() > 1e-3
    path = _write_ours(adapter, unet, "sdxl", tmp_path / "sdxl.safetensors")
    text_encoder, tokenizer = _tiny_text_encoder()
    text_encoder_2, tokenizer_2 = _tiny_text_encoder(projection=True)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4), text_encoder=text_encoder,
        text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
        scheduler=EulerDiscreteScheduler(),
    )  # fmt: skip
    pipe.load_lora_weights(str(path))  # the SDXL loader maps kohya's CompVis names with the UNet config
    assert {n for n, m in unet.named_modules() if hasattr(m, "lora_A")} == set(SDXL_MODULES)
    torch.testing.assert_close(_out(unet, inputs), ours, rtol=1e-4, atol=1e-5)
    pipe.unload_lora_weights()
    assert torch.equal(_out(unet, inputs), base)
