"""Detecting a checkpoint's architecture from FULL-SIZE key-to-shape tables.

The tables are built from the real architectures' configs (the ones the loader
ships) on PyTorch's ``meta`` device, so they cost no memory, and written in the
original single-file layout by ``tests/original_layout.py``. What detection sees
here is what it sees in a real SD 1.5, SD 2.1 or SDXL file; reduced-width test
files do not change it.
"""

from __future__ import annotations

import pytest
import torch
from original_layout import pipeline_to_original, unet_to_original

from spare_core.checkpoint_detect import (
    UnsupportedCheckpoint,
    detect_checkpoint,
    detect_prediction,
    read_shapes,
    v_statistic_says_v,
    yaml_parameterization,
)
from spare_core.single_file import component_configs

#: SDXL refiner UNet (stabilityai/stable-diffusion-xl-refiner-1.0 unet/config.json).
REFINER_UNET = dict(
    block_out_channels=[384, 768, 1536, 1536],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[6, 12, 24, 24],
    transformer_layers_per_block=4,
    cross_attention_dim=1280,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2560,
    sample_size=128,
)


class _Parts:
    def __init__(self, **modules):
        self.__dict__.update(modules)


def _meta_modules(arch: str) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = component_configs(arch)
    with torch.device("meta"):
        modules = {
            "unet": UNet2DConditionModel.from_config(configs["unet/config.json"]),
            "vae": AutoencoderKL.from_config(configs["vae/config.json"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder/config.json"])),
        }
        if arch == "sdxl":
            cfg = CLIPTextConfig(**configs["text_encoder_2/config.json"])
            modules["text_encoder_2"] = CLIPTextModelWithProjection(cfg)
    return modules


def _table(state) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def full_tables() -> dict[str, dict[str, tuple[int, ...]]]:
    """Full-size {key: shape} tables of SD 1.5, SD 2.1 and SDXL base in the original layout (meta device)."""
    return {arch: _table(pipeline_to_original(_Parts(**_meta_modules(arch)))) for arch in ("sd1", "sd2", "sdxl")}


@pytest.fixture(scope="module")
def refiner_table(full_tables) -> dict[str, tuple[int, ...]]:
    """The SDXL refiner: its own UNet (cross-attention 1280, 2560-wide size embeddings) and only OpenCLIP bigG."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**REFINER_UNET)
    table = _table(unet_to_original(unet.state_dict(), unet.config))
    for key, shape in full_tables["sdxl"].items():
        if key.startswith("conditioner.embedders.1.model."):
            table[key.replace("embedders.1.", "embedders.0.")] = shape
        elif key.startswith("first_stage_model."):
            table[key] = shape
    return table


def _refusal(table, name="model.safetensors") -> str:
    with pytest.raises(UnsupportedCheckpoint) as err:
        detect_checkpoint(table, name)
    message = str(err.value)
    assert "\n" not in message, "a refusal is one line"
    return message


@pytest.mark.parametrize("arch, context", [("sd1", 768), ("sd2", 1024), ("sdxl", 2048)])
def test_full_size_tables_are_detected_with_their_true_widths(full_tables, arch, context):
    detected = detect_checkpoint(full_tables[arch], "model.safetensors")
    assert (detected.arch, detected.context_dim, detected.in_channels) == (arch, context, 4)


def test_full_size_tables_have_the_real_files_landmark_keys_and_shapes(full_tables):
    # Keys and shapes a real SD 1.5 / 2.1 / SDXL base checkpoint has (as diffusers' and ComfyUI's detectors key on).
    sd1, sd2, sdxl = full_tables["sd1"], full_tables["sd2"], full_tables["sdxl"]
    assert sd1["model.diffusion_model.output_blocks.11.0.skip_connection.weight"] == (320, 640, 1, 1)
    assert sd1["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert sd1["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"] == (77, 768)
    assert sd2["model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 1024)
    assert sd2["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320)  # linear projection
    assert sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] == (3072, 1024)
    assert sdxl["model.diffusion_model.label_emb.0.0.weight"] == (1280, 2816)
    assert sdxl["model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"] == (640, 2048)
    assert sdxl["conditioner.embedders.1.model.transformer.resblocks.31.mlp.c_proj.bias"] == (1280,)
    assert sdxl["conditioner.embedders.1.model.text_projection"] == (1280, 1280)
    assert sdxl["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert sdxl["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)


@pytest.mark.parametrize("arch, family", [("sd1", "SD 1.x"), ("sd2", "SD 2.x"), ("sdxl", "SDXL base")])
def test_inpainting_unets_are_refused_by_their_nine_input_channels(full_tables, arch, family):
    table = dict(full_tables[arch])
    out_ch, _, kh, kw = table["model.diffusion_model.input_blocks.0.0.weight"]
    table["model.diffusion_model.input_blocks.0.0.weight"] = (out_ch, 9, kh, kw)
    assert _refusal(table) == (
        f"model.safetensors looks like an {family} inpainting UNet (9 input channels); "
        "SPARE erases from text-to-image base models (SD 1.x, SD 2.x, SDXL base)"
    )


@pytest.mark.parametrize("channels, what", [(8, "InstructPix2Pix"), (5, "depth"), (7, "upscaler"), (6, "6 input")])
def test_other_input_channel_counts_are_named(full_tables, channels, what):
    table = dict(full_tables["sd2"])
    table["model.diffusion_model.input_blocks.0.0.weight"] = (320, channels, 3, 3)
    assert what in _refusal(table)


def test_the_sdxl_refiner_is_refused(refiner_table):
    assert "looks like the SDXL refiner" in _refusal(refiner_table)
    unet_only = {k: v for k, v in refiner_table.items() if k.startswith("model.diffusion_model.")}
    assert "has an SDXL refiner UNet but no text encoder" in _refusal(unet_only)


def test_sd3_and_flux_are_refused_by_their_block_names():
    sd3 = {
        "model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,),
        "model.diffusion_model.x_embedder.proj.weight": (1536, 16, 2, 2),
        "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
    }
    assert "looks like Stable Diffusion 3" in _refusal(sd3)
    flux = {"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "img_in.weight": (3072, 64)}
    assert "looks like Flux" in _refusal(flux)
    flux_ckpt = {f"model.diffusion_model.{k}": v for k, v in flux.items()}
    assert "looks like Flux" in _refusal(flux_ckpt)


def test_unknown_files_are_refused_with_what_they_hold(full_tables):
    assert "is not a Stable Diffusion checkpoint" in _refusal({"foo.weight": (3,)})
    assert "holds no tensors" in _refusal({})
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}
    assert "is a LoRA" in _refusal(lora)
    vae = {k.removeprefix("first_stage_model."): v for k, v in full_tables["sd1"].items() if "first_stage" in k}
    assert "is a VAE alone" in _refusal(vae)
    diffusers_unet = {"down_blocks.0.attentions.0.proj_in.weight": (320, 320, 1, 1), "conv_in.weight": (320, 4, 3, 3)}
    assert "diffusers-layout component" in _refusal(diffusers_unet)


@pytest.mark.parametrize("arch, name", [("sd1", "SD 1.x"), ("sd2", "SD 2.x"), ("sdxl", "SDXL base")])
def test_a_unet_without_text_encoder_is_named_by_its_true_widths(full_tables, arch, name):
    unet_only = {k: v for k, v in full_tables[arch].items() if k.startswith("model.diffusion_model.")}
    assert f"has an {name} UNet but no text encoder" in _refusal(unet_only)


def test_shape_rules_catch_what_key_names_do_not(full_tables):
    # SD 1.x UNet with SD 2.x's text encoder: the key names say SD 2.x, the widths disagree.
    mixed = {k: v for k, v in full_tables["sd1"].items() if not k.startswith("cond_stage_model.")}
    mixed.update({k: v for k, v in full_tables["sd2"].items() if k.startswith("cond_stage_model.")})
    assert "cross-attention width (768) does not match its text encoder (1024)" in _refusal(mixed)
    # SD 2.x with class embeddings: an unCLIP (image variation) model.
    unclip = dict(full_tables["sd2"], **{"model.diffusion_model.label_emb.0.0.weight": (1280, 1024)})
    assert "unCLIP" in _refusal(unclip)
    # No VAE.
    no_vae = {k: v for k, v in full_tables["sd1"].items() if not k.startswith("first_stage_model.")}
    assert "without a VAE" in _refusal(no_vae)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickles_are_refused_without_being_opened(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04this would be unpickled by a careless loader")
    with pytest.raises(UnsupportedCheckpoint, match=rf"model\{suffix} is a pickled checkpoint .*only \.safetensors"):
        read_shapes(path)


def test_read_shapes_reads_the_header_only(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"a.weight": torch.zeros(3, 4), "b": torch.zeros(2)}, str(path))
    assert read_shapes(path) == {"a.weight": (3, 4), "b": (2,)}
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(UnsupportedCheckpoint, match="bad.safetensors is not a readable .safetensors file"):
        read_shapes(bad)


def test_yaml_parameterization_reads_automatic1111_configs():
    v_yaml = 'model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    parameterization: "v"\n'
    assert yaml_parameterization(v_yaml) == "v"
    assert yaml_parameterization("model:\n  params:\n    parameterization: 'eps'  # default\n") == "eps"
    assert yaml_parameterization("model:\n  params:\n    linear_start: 0.00085\n") is None


def test_comfyui_statistic_threshold():
    assert v_statistic_says_v(0.12) and not v_statistic_says_v(0.05) and not v_statistic_says_v(0.09)


def test_sd1_and_sdxl_default_to_epsilon_without_a_marker(tmp_path, full_tables):
    path = tmp_path / "m.safetensors"  # never opened: the statistic is read for SD 2.x only
    assert detect_prediction(path, full_tables["sd1"], "sd1")[0] == "epsilon"
    assert detect_prediction(path, full_tables["sdxl"], "sdxl")[0] == "epsilon"
    assert detect_prediction(path, dict(full_tables["sdxl"], v_pred=(0,)), "sdxl")[0] == "v_prediction"
