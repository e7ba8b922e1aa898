"""LoRA files in kohya layout: layer names, round trips, errors, and loading by diffusers itself.

The UNets are tiny ``UNet2DConditionModel``s with the block structure of SD1.x
(4 blocks, 2 layers each, last down block without attention) and SDXL (3 blocks,
first without attention, deeper transformers, added embeddings): the layer names
depend only on that structure, not on the channel counts.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import save_file
from unet_configs import SD1_LIKE, SDXL_LIKE

from spare_core.lora_file import LoraFileError, LoraModuleWeights, load_lora_file, lora_delta, save_lora_file
from spare_core.lora_naming import (
    compvis_to_diffusers,
    default_naming,
    diffusers_to_compvis,
    kohya_layer_names,
    resolve_kohya_layer,
    to_kohya_key,
)

TO_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
CONV1 = "down_blocks.1.resnets.0.conv1"


def _build(config: dict) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**config).eval()


@pytest.fixture(scope="module")
def sd1_unet() -> UNet2DConditionModel:
    return _build(SD1_LIKE)


@pytest.fixture(scope="module")
def sdxl_unet() -> UNet2DConditionModel:
    return _build(SDXL_LIKE)


def _names(unet) -> list[str]:
    return [name for name, _ in unet.named_modules()]


def _adaptable(unet) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def _random_lora(module: torch.nn.Module, rank: int, alpha: float, seed: int = 0) -> LoraModuleWeights:
    g = torch.Generator().manual_seed(seed)
    out_f, in_f, *kernel = module.weight.shape
    down = torch.randn(rank, in_f, *kernel, generator=g)
    up = torch.randn(out_f, rank, *([1, 1] if kernel else []), generator=g)
    return LoraModuleWeights(down=down, up=up, alpha=alpha)


def _some_modules(unet, names: list[str], rank: int = 3, alpha: float = 1.5) -> dict[str, LoraModuleWeights]:
    modules = _adaptable(unet)
    return {n: _random_lora(modules[n], rank, alpha, seed=i) for i, n in enumerate(names)}


def _load(path, unet, arch):
    return load_lora_file(path, _names(unet), unet.config, expected_arch=arch)


# ---------------------------------------------------------------- naming


def test_kohya_key_replaces_dots():
    assert to_kohya_key(TO_K) == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def test_default_naming_follows_kohya():
    assert [default_naming(a) for a in ("sd1", "sd2", "toy", "sdxl")] == ["diffusers"] * 3 + ["compvis"]
    with pytest.raises(ValueError, match="unknown architecture"):
        default_naming("flux")


# SD1.5 block numbering, written out by hand (ComfyUI comfy/utils.py unet_to_diffusers).
SD1_COMPVIS = {
    TO_K: "input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    "down_blocks.2.attentions.1.proj_in": "input_blocks.8.1.proj_in",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": "output_blocks.3.1.transformer_blocks.0.attn2.to_k",
    "up_blocks.3.attentions.2.proj_out": "output_blocks.11.1.proj_out",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_q": "middle_block.1.transformer_blocks.0.attn1.to_q",
    "mid_block.resnets.1.conv2": "middle_block.2.out_layers.3",
    CONV1: "input_blocks.4.0.in_layers.2",
    "down_blocks.1.resnets.0.conv_shortcut": "input_blocks.4.0.skip_connection",
    "down_blocks.0.resnets.1.time_emb_proj": "input_blocks.2.0.emb_layers.1",
    "down_blocks.3.resnets.1.conv1": "input_blocks.11.0.in_layers.2",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
    "down_blocks.2.downsamplers.0.conv": "input_blocks.9.0.op",
    "up_blocks.0.resnets.2.conv1": "output_blocks.2.0.in_layers.2",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.2.1.conv",  # no attentions in up block 0
    "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

SDXL_COMPVIS = {
    "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q": "input_blocks.4.1.transformer_blocks.1.attn1.to_q",
    "down_blocks.0.resnets.1.conv2": "input_blocks.2.0.out_layers.3",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
    "down_blocks.2.attentions.1.proj_in": "input_blocks.8.1.proj_in",
    "up_blocks.0.attentions.2.proj_out": "output_blocks.2.1.proj_out",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
    "up_blocks.2.resnets.2.conv_shortcut": "output_blocks.8.0.skip_connection",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


@pytest.mark.parametrize(("diffusers_name", "compvis_name"), SD1_COMPVIS.items())
def test_sd1_compvis_names(diffusers_name, compvis_name):
    assert diffusers_to_compvis(diffusers_name, SD1_LIKE) == compvis_name
    assert compvis_to_diffusers(compvis_name, SD1_LIKE) == diffusers_name


@pytest.mark.parametrize(("diffusers_name", "compvis_name"), SDXL_COMPVIS.items())
def test_sdxl_compvis_names(diffusers_name, compvis_name):
    assert diffusers_to_compvis(diffusers_name, SDXL_LIKE) == compvis_name
    assert compvis_to_diffusers(compvis_name, SDXL_LIKE) == diffusers_name


@pytest.mark.parametrize("bad", ["down_blocks.3.downsamplers.0.conv", "down_blocks.3.attentions.0.proj_in", "nope"])
def test_names_that_do_not_exist_have_no_compvis_spelling(bad):
    with pytest.raises(ValueError):
        diffusers_to_compvis(bad, SD1_LIKE)


@pytest.mark.parametrize("config_name", ["SD1_LIKE", "SDXL_LIKE", "toy"])
def test_compvis_spelling_agrees_with_diffusers_own_converter(config_name):
    """Rename every parameter to CompVis with our mapping; diffusers' LDM converter must give the original back."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from spare_core.toy.model import UNET_CONFIG

    unet = _build({"SD1_LIKE": SD1_LIKE, "SDXL_LIKE": SDXL_LIKE, "toy": UNET_CONFIG}[config_name])
    state = unet.state_dict()
    ldm = {}
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        ldm[f"model.diffusion_model.{diffusers_to_compvis(module, unet.config)}.{param}"] = value
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(back) == set(state)
    assert all(back[k] is state[k] for k in state)
    for name in _names(unet):
        try:
            compvis = diffusers_to_compvis(name, unet.config)
        except ValueError:
            continue
        assert compvis_to_diffusers(compvis, unet.config) == name


def test_layer_tables_and_resolution(sd1_unet):
    names = _names(sd1_unet)
    diffusers_table = kohya_layer_names(names, "diffusers", sd1_unet.config)
    compvis_table = kohya_layer_names(names, "compvis", sd1_unet.config)
    for name in _adaptable(sd1_unet):
        assert diffusers_table[to_kohya_key(name)] == name
        assert compvis_table[to_kohya_key(diffusers_to_compvis(name, sd1_unet.config))] == name
    forms = [
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
        "down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k",
        "input_blocks_1_1_transformer_blocks_0_attn2_to_k",
    ]
    assert {resolve_kohya_layer(f, names, sd1_unet.config) for f in forms} == {TO_K}
    assert resolve_kohya_layer("lora_unet_conv_in", names, sd1_unet.config) == "conv_in"
    assert resolve_kohya_layer("lora_unet_input_blocks_0_0", names, sd1_unet.config) == "conv_in"
    with pytest.raises(ValueError, match="lora_unet_down_blocks_7_resnets_0_conv1"):
        resolve_kohya_layer("lora_unet_down_blocks_7_resnets_0_conv1", names, sd1_unet.config)


# ---------------------------------------------------------------- files


def test_sd1_file_keys_by_hand(sd1_unet, tmp_path):
    path = tmp_path / "sd1.safetensors"
    modules = _some_modules(sd1_unet, [TO_K, CONV1, "conv_in"], rank=2)
    save_lora_file(path, modules, sd1_unet.config, "sd1", {"spare_concept": "cat"})
    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        conv_down = f.get_tensor("lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight")
        conv_up = f.get_tensor("lora_unet_down_blocks_1_resnets_0_conv1.lora_up.weight")
        alpha = f.get_tensor("lora_unet_conv_in.alpha")
    assert keys == {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha",
        "lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight",
        "lora_unet_down_blocks_1_resnets_0_conv1.lora_up.weight",
        "lora_unet_down_blocks_1_resnets_0_conv1.alpha",
        "lora_unet_conv_in.lora_down.weight",
        "lora_unet_conv_in.lora_up.weight",
        "lora_unet_conv_in.alpha",
    }
    assert tuple(conv_down.shape) == (2, 8, 3, 3) and tuple(conv_up.shape) == (16, 2, 1, 1)
    assert conv_down.dtype == torch.float16 and alpha.shape == () and alpha.item() == 1.5
    assert meta == {
        "ss_network_module": "networks.lora",
        "ss_network_dim": "2",
        "ss_network_alpha": "1.5",
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "spare_format_version": "1",
        "spare_arch": "sd1",
        "spare_concept": "cat",
    }


def test_sdxl_file_uses_compvis_keys(sdxl_unet, tmp_path):
    path = tmp_path / "xl.safetensors"
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    save_lora_file(path, _some_modules(sdxl_unet, [name, "add_embedding.linear_1"]), sdxl_unet.config, "sdxl", {})
    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys
    assert "lora_unet_label_emb_0_0.alpha" in keys
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["spare_arch"] == "sdxl"


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_round_trip_linear_and_conv(arch, sd1_unet, sdxl_unet, tmp_path):
    unet = sd1_unet if arch == "sd1" else sdxl_unet
    names = [n for n in _adaptable(unet) if n.endswith(("attn2.to_k", "proj_in", "conv1", ".conv", "conv_in"))]
    modules = _some_modules(unet, names, rank=4, alpha=2.0)
    modules[names[0]].alpha = 0.3  # per-module alpha survives exactly
    path = tmp_path / "lora.safetensors"
    save_lora_file(path, modules, unet.config, arch, {"spare_run": "1"}, dtype=torch.float32)
    loaded, meta = _load(path, unet, arch)
    assert set(loaded) == set(modules)
    for name, w in modules.items():
        assert torch.equal(loaded[name].down, w.down) and torch.equal(loaded[name].up, w.up)
        assert loaded[name].alpha == pytest.approx(w.alpha, rel=1e-7)
    assert meta["spare_run"] == "1" and meta["ss_network_alpha"] == "Dynamic" and meta["ss_network_dim"] == "4"


def test_fp16_round_trip_is_close(sd1_unet, tmp_path):
    modules = _some_modules(sd1_unet, [TO_K, CONV1])
    save_lora_file(tmp_path / "a.safetensors", modules, sd1_unet.config, "sd1", {})
    loaded, _ = _load(tmp_path / "a.safetensors", sd1_unet, "sd1")
    for name, w in modules.items():
        assert loaded[name].down.dtype == torch.float32
        torch.testing.assert_close(loaded[name].down, w.down, rtol=1e-3, atol=1e-3)


def test_delta_is_scaled_product(sd1_unet):
    modules = _adaptable(sd1_unet)
    linear = _random_lora(modules[TO_K], rank=3, alpha=1.5)
    expected = (1.5 / 3) * torch.einsum("or,ri->oi", linear.up, linear.down)
    torch.testing.assert_close(lora_delta(linear), expected)
    assert lora_delta(linear).shape == modules[TO_K].weight.shape


def test_conv_delta_acts_like_down_then_up(sd1_unet):
    """A conv LoRA is down (the module's kernel) then a 1x1 up; its delta is the merged kernel."""
    conv = _adaptable(sd1_unet)[CONV1]
    w = _random_lora(conv, rank=2, alpha=4.0)
    x = torch.randn(1, conv.in_channels, 6, 6)
    through = torch.nn.functional.conv2d(x, w.down, padding=1)
    through = w.scale * torch.nn.functional.conv2d(through, w.up)
    merged = torch.nn.functional.conv2d(x, lora_delta(w), padding=1)
    assert lora_delta(w).shape == conv.weight.shape
    torch.testing.assert_close(merged, through, rtol=1e-4, atol=1e-4)


def test_missing_alpha_means_scale_one(sd1_unet, tmp_path):
    w = _random_lora(_adaptable(sd1_unet)[TO_K], rank=3, alpha=1.0)
    layer = to_kohya_key(TO_K)
    save_file({f"{layer}.lora_down.weight": w.down, f"{layer}.lora_up.weight": w.up}, tmp_path / "a.safetensors")
    loaded, meta = _load(tmp_path / "a.safetensors", sd1_unet, "sd1")
    assert loaded[TO_K].alpha == 3.0 and loaded[TO_K].scale == 1.0 and meta == {}


def test_save_refuses_bad_metadata(sd1_unet, tmp_path):
    modules = _some_modules(sd1_unet, [TO_K])
    with pytest.raises(TypeError, match="must be a str"):
        save_lora_file(tmp_path / "a.safetensors", modules, sd1_unet.config, "sd1", {"spare_steps": 5})
    with pytest.raises(ValueError, match="written by save_lora_file"):
        save_lora_file(tmp_path / "a.safetensors", modules, sd1_unet.config, "sd1", {"spare_arch": "sd2"})
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- errors


def _pair(unet, name=TO_K, rank=2):
    w = _random_lora(_adaptable(unet)[name], rank, 1.0)
    layer = to_kohya_key(name)
    return {f"{layer}.lora_down.weight": w.down, f"{layer}.lora_up.weight": w.up, f"{layer}.alpha": torch.tensor(1.0)}


def _bad_file(tmp_path, tensors, metadata=None):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, path, metadata=metadata)
    return path


def test_error_missing_file(sd1_unet, tmp_path):
    with pytest.raises(LoraFileError, match="does not exist"):
        _load(tmp_path / "none.safetensors", sd1_unet, "sd1")


def test_error_not_safetensors(sd1_unet, tmp_path):
    path = tmp_path / "pickled.safetensors"
    torch.save({"a": torch.zeros(1)}, path)  # a pickle under a safetensors name: must not be unpickled
    with pytest.raises(LoraFileError, match="not a readable safetensors file"):
        _load(path, sd1_unet, "sd1")
    path.write_bytes(b"\x00" * 3)
    with pytest.raises(LoraFileError, match="not a readable safetensors file"):
        _load(path, sd1_unet, "sd1")


def test_error_not_a_lora(sd1_unet, tmp_path):
    path = _bad_file(tmp_path, {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)})
    with pytest.raises(LoraFileError, match="not a LoRA file.*looks like a checkpoint"):
        _load(path, sd1_unet, "sd1")


def test_error_down_without_up(sd1_unet, tmp_path):
    tensors = _pair(sd1_unet)
    del tensors[f"{to_kohya_key(TO_K)}.lora_up.weight"]
    with pytest.raises(LoraFileError, match="attn2_to_k.*no lora_up.weight"):
        _load(_bad_file(tmp_path, tensors), sd1_unet, "sd1")


def test_error_ranks_disagree(sd1_unet, tmp_path):
    tensors = _pair(sd1_unet)
    tensors[f"{to_kohya_key(TO_K)}.lora_up.weight"] = torch.zeros(16, 5)
    with pytest.raises(LoraFileError, match=r"rank of lora_down \(2\) and lora_up \(5\) differ"):
        _load(_bad_file(tmp_path, tensors), sd1_unet, "sd1")


def test_error_rank_zero(sd1_unet, tmp_path):
    tensors = _pair(sd1_unet)
    tensors[f"{to_kohya_key(TO_K)}.lora_down.weight"] = torch.zeros(0, 8)
    tensors[f"{to_kohya_key(TO_K)}.lora_up.weight"] = torch.zeros(16, 0)
    with pytest.raises(LoraFileError, match="rank is 0"):
        _load(_bad_file(tmp_path, tensors), sd1_unet, "sd1")


def test_error_unknown_layer(sd1_unet, tmp_path):
    tensors = _pair(sd1_unet)
    tensors["lora_unet_down_blocks_9_resnets_0_conv1.lora_down.weight"] = torch.zeros(2, 4)
    tensors["lora_unet_down_blocks_9_resnets_0_conv1.lora_up.weight"] = torch.zeros(4, 2)
    with pytest.raises(LoraFileError, match="1 layer.*match no module.*down_blocks_9_resnets_0_conv1"):
        _load(_bad_file(tmp_path, tensors), sd1_unet, "sd1")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"spare_arch": "sdxl"}, "for SDXL .*model is Stable Diffusion 1.x"),
        ({"ss_base_model_version": "sdxl_base_v1-0"}, "for SDXL"),
        ({"ss_base_model_version": "sd_v2", "ss_v2": "True"}, "for Stable Diffusion 2.x"),
    ],
)
def test_error_other_architecture(sd1_unet, tmp_path, metadata, message):
    with pytest.raises(LoraFileError, match=message):
        _load(_bad_file(tmp_path, _pair(sd1_unet), metadata), sd1_unet, "sd1")
    _load(_bad_file(tmp_path, _pair(sd1_unet), metadata), sd1_unet, None)  # no expectation: no check


@pytest.mark.parametrize(
    ("key", "what"),
    [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.dora_scale", "is a DoRA file"),
        ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight", "is a PEFT-style file"),
        ("lora_unet_conv_in.hada_w1_a", "is a LoHa file"),
        ("spare_config", "not kohya LoRA down/up/alpha.*unrecognised"),
        ("lora_unet_conv_in.diff", "not kohya LoRA down/up/alpha.*full weight or bias"),
    ],
)
def test_error_extra_tensors(sd1_unet, tmp_path, key, what):
    tensors = _pair(sd1_unet) | {key: torch.zeros(1)}
    with pytest.raises(LoraFileError, match=what):
        _load(_bad_file(tmp_path, tensors), sd1_unet, "sd1")


def test_text_encoder_layers_are_read_apart_and_skipped(sd1_unet, tmp_path, caplog):
    te = "lora_te_text_model_encoder_layers_0_self_attn_k_proj"
    tensors = _pair(sd1_unet) | {f"{te}.lora_down.weight": torch.ones(2, 8), f"{te}.lora_up.weight": torch.ones(8, 2)}
    with caplog.at_level("WARNING"):
        loaded, _ = _load(_bad_file(tmp_path, tensors), sd1_unet, "sd1")
    assert set(loaded) == {TO_K}
    assert "1 text-encoder layer(s) skipped" in caplog.text and te in caplog.text


def test_error_same_module_in_both_namings(sd1_unet, tmp_path):
    tensors = _pair(sd1_unet)
    compvis = to_kohya_key(diffusers_to_compvis(TO_K, sd1_unet.config))
    tensors |= {k.replace(to_kohya_key(TO_K), compvis): v.clone() for k, v in tensors.items()}
    with pytest.raises(LoraFileError, match="both name module"):
        _load(_bad_file(tmp_path, tensors), sd1_unet, "sd1")


# ---------------------------------------------------------------- diffusers loads our files


def _assert_fused(unet, reference: dict[str, torch.Tensor], loaded: dict[str, LoraModuleWeights]) -> None:
    for name, w in loaded.items():
        module = unet.get_submodule(name)
        weight = getattr(module, "base_layer", module).weight
        torch.testing.assert_close(weight, reference[name] + lora_delta(w), rtol=1e-4, atol=1e-5, msg=name)


def _every_module(unet) -> dict[str, LoraModuleWeights]:
    return {n: _random_lora(m, 2, 1.0, seed=i) for i, (n, m) in enumerate(_adaptable(unet).items())}


def _scaled(modules: dict[str, LoraModuleWeights]) -> dict[str, LoraModuleWeights]:
    """Small updates, so that fused weights compare well in float32."""
    return {n: LoraModuleWeights(w.down * 0.1, w.up * 0.1, w.alpha) for n, w in modules.items()}


def test_stable_diffusion_pipeline_loads_every_module(tmp_path):
    """diffusers' own StableDiffusionPipeline.load_lora_weights reads the SD1 file (diffusers naming) completely."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from spare_core.toy.text import build_tokenizer

    tokenizer = build_tokenizer()  # built in code: no hub files
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
    )
    unet = _build(SD1_LIKE)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    modules = _scaled(_every_module(unet))
    assert len(modules) == 281  # all Linear and Conv2d layers of an SD1.5-shaped UNet
    path = tmp_path / "sd1.safetensors"
    save_lora_file(path, modules, unet.config, "sd1", {})
    loaded, _ = _load(path, unet, "sd1")
    reference = {n: m.weight.detach().clone() for n, m in _adaptable(unet).items()}
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(components=["unet"], lora_scale=1.0)
    _assert_fused(pipe.unet, reference, loaded)


def test_sdxl_loader_maps_compvis_file(tmp_path):
    """The SDXL loader path (lora_state_dict with the UNet config, then load_lora_into_unet) reads our CompVis names."""
    from diffusers import StableDiffusionXLPipeline

    unet = _build(SDXL_LIKE)
    modules = _scaled(_every_module(unet))
    path = tmp_path / "xl.safetensors"
    save_lora_file(path, modules, unet.config, "sdxl", {})
    loaded, _ = _load(path, unet, "sdxl")
    reference = {n: m.weight.detach().clone() for n, m in _adaptable(unet).items()}
    state, alphas = StableDiffusionXLPipeline.lora_state_dict(str(path), unet_config=unet.config)
    StableDiffusionXLPipeline.load_lora_into_unet(state, alphas, unet=unet)
    unet.fuse_lora(lora_scale=1.0)
    _assert_fused(unet, reference, loaded)
