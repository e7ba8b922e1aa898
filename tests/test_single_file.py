"""Opening single-file checkpoints offline: SD 1.x, SD 2.x (epsilon and v) and SDXL base.

The checkpoint files are written here, with random weights in the original
(CompVis / Stability) key layout, by ``tests/original_layout.py``; nothing is
downloaded. The models are reduced in width with the architectures' block
structure, and the loader is handed the same reduction of its shipped configs.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from original_layout import pipeline_to_original
from safetensors.torch import save_file

from spare_core import checkpoint_detect, single_file
from spare_core.models import ModelError, open_model

TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
VAE = dict(block_out_channels=[8, 8, 8, 8], norm_num_groups=4, sample_size=64)
#: Per architecture, what the tests change in the shipped configs: widths only, never the block structure.
REDUCED = {
    "sd1": {
        "unet/config.json": dict(block_out_channels=[32, 64, 64, 64], cross_attention_dim=32, sample_size=8),
        "vae/config.json": VAE,
        "text_encoder/config.json": TEXT,
    },
    "sd2": {
        "unet/config.json": dict(
            block_out_channels=[32, 64, 64, 64], cross_attention_dim=32, attention_head_dim=[2, 4, 4, 4], sample_size=8
        ),
        "vae/config.json": VAE,
        "text_encoder/config.json": TEXT,
    },
    "sdxl": {
        "unet/config.json": dict(
            block_out_channels=[32, 64, 64],
            cross_attention_dim=96,
            attention_head_dim=[2, 4, 4],
            transformer_layers_per_block=[1, 2, 2],
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 64,
            sample_size=8,
        ),
        "vae/config.json": VAE,
        "text_encoder/config.json": TEXT,
        "text_encoder_2/config.json": dict(TEXT, hidden_size=64, projection_dim=64),
    },
}


_SHIPPED_CONFIGS = single_file.component_configs


def reduced_configs(arch: str, prediction_type: str = "epsilon") -> dict:
    """The loader's shipped configs with the reduced widths (the layout and every other value stay)."""
    configs = _SHIPPED_CONFIGS(arch, prediction_type)
    for rel, changes in REDUCED[arch].items():
        configs[rel].update(copy.deepcopy(changes))
    return configs


@pytest.fixture(autouse=True)
def loader_uses_reduced_configs(monkeypatch):
    monkeypatch.setattr(single_file, "component_configs", reduced_configs)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def build_modules(arch: str) -> dict[str, torch.nn.Module]:
    """Random-weight components of ``arch`` from the reduced configs (seeded)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = reduced_configs(arch)
    torch.manual_seed(0)
    modules = {
        "unet": UNet2DConditionModel.from_config(configs["unet/config.json"]).eval(),
        "vae": AutoencoderKL.from_config(configs["vae/config.json"]).eval(),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder/config.json"])).eval(),
    }
    if arch == "sdxl":
        cfg = CLIPTextConfig(**configs["text_encoder_2/config.json"])
        modules["text_encoder_2"] = CLIPTextModelWithProjection(cfg).eval()
    with torch.no_grad():  # non-zero norms and biases, so that a misplaced weight shows
        for p in modules["unet"].parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.01)
    return modules


class _Parts:
    def __init__(self, modules):
        self.__dict__.update(modules)


def write_checkpoint(path, modules, extra=None) -> dict[str, torch.Tensor]:
    state = pipeline_to_original(_Parts(modules))
    state.update(extra or {})
    save_file(state, str(path))
    return state


@pytest.fixture(scope="module")
def sd1_modules():
    return build_modules("sd1")


@pytest.fixture(scope="module")
def sd2_modules():
    return build_modules("sd2")


def _assert_same_weights(loaded: torch.nn.Module, original: torch.nn.Module, what: str) -> None:
    got, want = loaded.state_dict(), original.state_dict()
    want = {k: v for k, v in want.items() if not k.endswith("position_ids")}
    missing = sorted(set(want) - set(got))
    assert not missing, f"{what}: missing {missing[:5]}"
    for key, value in want.items():
        assert torch.equal(got[key].float(), value.float()), f"{what}: {key} differs"


def _unet_out(unet, context_dim, added=None):
    torch.manual_seed(1)
    x = torch.randn(1, 4, 8, 8)
    ctx = torch.randn(1, 5, context_dim)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=ctx, added_cond_kwargs=added).sample


def test_sd1_round_trip_gives_the_same_weights_and_unet_output(tmp_path, sd1_modules, no_network):
    path = tmp_path / "sd1_model.safetensors"
    write_checkpoint(path, sd1_modules)
    loaded = single_file.load_checkpoint(path)
    pipe = loaded.pipe
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert loaded.detected.arch == "sd1" and loaded.prediction_type == "epsilon"
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(pipe, name), sd1_modules[name], name)
    torch.testing.assert_close(_unet_out(pipe.unet, 32), _unet_out(sd1_modules["unet"], 32), rtol=1e-5, atol=1e-6)
    ids = pipe.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and ids[0, 0].item() == 49406 and ids[0, -1].item() == 49407  # <|startoftext|>, pad
    with torch.no_grad():
        torch.testing.assert_close(pipe.text_encoder(ids)[0], sd1_modules["text_encoder"](ids)[0])
    assert pipe.scheduler.config.prediction_type == "epsilon"


def test_sd1_checkpoint_opens_as_a_backend_through_open_model(tmp_path, sd1_modules, no_network):
    from spare_core.backends.diffusers_backend import DiffusersBackend

    path = tmp_path / "sdxl-refiner-inpainting-vpred.safetensors"  # the name must not matter
    write_checkpoint(path, sd1_modules)
    backend = open_model(str(path))
    assert isinstance(backend, DiffusersBackend)
    assert backend.arch == "sd1"
    cond = backend.encode_prompts(["a cat"])
    assert cond.hidden_states.shape == (1, 77, 32)


def test_sd2_round_trip_splits_the_fused_attention_back(tmp_path, sd2_modules, no_network):
    path = tmp_path / "sd2.safetensors"
    write_checkpoint(path, sd2_modules)
    loaded = single_file.load_checkpoint(path)
    pipe = loaded.pipe
    assert loaded.detected.arch == "sd2"
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(pipe, name), sd2_modules[name], name)
    assert pipe.tokenizer.pad_token == "!"
    ids = pipe.tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids[0, -1].item() == pipe.tokenizer.convert_tokens_to_ids("!")
    with torch.no_grad():
        torch.testing.assert_close(pipe.text_encoder(ids)[0], sd2_modules["text_encoder"](ids)[0])


def _plant_norm_bias(modules, std: float) -> dict:
    """The weight ComfyUI's statistic reads, with a chosen spread (diffusers name of output_blocks.11.1's norm1)."""
    key = "up_blocks.3.attentions.2.transformer_blocks.0.norm1.bias"
    unet = copy.deepcopy(modules["unet"])
    with torch.no_grad():
        bias = dict(unet.named_parameters())[key]
        torch.manual_seed(2)
        values = torch.randn_like(bias)
        bias.copy_((values - values.mean()) / values.std(unbiased=False) * std)
    return dict(modules, unet=unet)


@pytest.mark.parametrize(
    "std, marker, yaml_text, expected",
    [
        (0.01, None, None, "epsilon"),  # statistic below the threshold, no marker
        (0.20, None, None, "v_prediction"),  # statistic above it
        (0.01, "v_pred", None, "v_prediction"),  # ComfyUI's marker wins over the statistic
        (0.01, None, 'model:\n  params:\n    parameterization: "v"\n', "v_prediction"),  # A1111's YAML wins
        (0.20, None, "model:\n  params:\n    parameterization: eps\n", "epsilon"),
    ],
)
def test_sd2_prediction_type_marker_then_statistic_then_epsilon(
    tmp_path, sd2_modules, std, marker, yaml_text, expected
):
    modules = _plant_norm_bias(sd2_modules, std)
    path = tmp_path / "sd2_any.safetensors"
    write_checkpoint(path, modules, {marker: torch.tensor([])} if marker else None)
    if yaml_text:
        (tmp_path / "sd2_any.yaml").write_text(yaml_text)
    shapes = checkpoint_detect.read_shapes(path)
    prediction, _ = checkpoint_detect.detect_prediction(path, shapes, "sd2")
    assert prediction == expected


@pytest.mark.parametrize("std, expected", [(0.01, "epsilon"), (0.20, "v_prediction")])
def test_sd2_pipelines_get_the_detected_prediction_type(tmp_path, sd2_modules, std, expected, no_network):
    path = tmp_path / "sd2.safetensors"
    write_checkpoint(path, _plant_norm_bias(sd2_modules, std))
    pipe = single_file.load_checkpoint(path).pipe
    assert pipe.scheduler.config.prediction_type == expected
    assert pipe.unet.config.upcast_attention is (expected == "v_prediction")


def test_sdxl_round_trip_builds_an_sdxl_pipeline(tmp_path, no_network):
    modules = build_modules("sdxl")
    path = tmp_path / "sdxl.safetensors"
    write_checkpoint(path, modules)
    loaded = single_file.load_checkpoint(path)
    pipe = loaded.pipe
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert loaded.detected.arch == "sdxl" and loaded.detected.context_dim == 96
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        _assert_same_weights(getattr(pipe, name), modules[name], name)
    added = {"text_embeds": torch.randn(1, 64), "time_ids": torch.tensor([[8.0, 8.0, 0.0, 0.0, 8.0, 8.0]])}
    torch.testing.assert_close(
        _unet_out(pipe.unet, 96, added), _unet_out(modules["unet"], 96, added), rtol=1e-5, atol=1e-6
    )
    assert pipe.tokenizer.pad_token == "<|endoftext|>" and pipe.tokenizer_2.pad_token == "!"
    ids = pipe.tokenizer_2(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        got = pipe.text_encoder_2(ids, output_hidden_states=True)
        want = modules["text_encoder_2"](ids, output_hidden_states=True)
    torch.testing.assert_close(got.text_embeds, want.text_embeds)
    torch.testing.assert_close(got.hidden_states[-2], want.hidden_states[-2])


def test_every_architecture_loads_with_the_network_off_and_an_empty_hub_cache(
    tmp_path, monkeypatch, sd1_modules, sd2_modules, no_network
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "empty_hf_home" / "hub"))
    cases = [
        ("sd1", sd1_modules, 0.01, "epsilon"),
        ("sd2", sd2_modules, 0.01, "epsilon"),
        ("sd2", sd2_modules, 0.20, "v_prediction"),
        ("sd2", sd2_modules, -1.0, "v_prediction"),  # ComfyUI's v_pred marker in the file
        ("sdxl", build_modules("sdxl"), None, "epsilon"),
    ]
    for i, (arch, modules, std, prediction) in enumerate(cases):
        path = tmp_path / f"model_{i}.safetensors"
        marker = {"v_pred": torch.tensor([])} if std == -1.0 else None
        write_checkpoint(path, _plant_norm_bias(modules, std) if std is not None and std >= 0 else modules, marker)
        loaded = single_file.load_checkpoint(path)
        assert (loaded.detected.arch, loaded.prediction_type) == (arch, prediction)
        assert loaded.pipe.scheduler.config.prediction_type == prediction
    assert not any((tmp_path / "empty_hf_home").rglob("*.json")), "something was written to the hub cache"


def test_refused_files_raise_one_line_model_errors(tmp_path, sd1_modules):
    inpaint = tmp_path / "model.safetensors"
    state = pipeline_to_original(_Parts(sd1_modules))
    conv = state["model.diffusion_model.input_blocks.0.0.weight"]
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(conv.shape[0], 9, *conv.shape[2:])
    save_file(state, str(inpaint))
    with pytest.raises(ModelError) as err:
        open_model(str(inpaint))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model.safetensors looks like an SD 1.x inpainting UNet (9 input channels)")

    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(
        ModelError, match=r"old\.ckpt is a pickled checkpoint \(\.ckpt\); SPARE opens only \.safetensors"
    ):
        open_model(str(pickle))

    junk = tmp_path / "junk.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(junk))
    with pytest.raises(ModelError, match="junk.safetensors is not a Stable Diffusion checkpoint"):
        open_model(str(junk))


class _FakeSDXLBackend:
    def __init__(self, pipe, arch="sdxl", domain=None):
        self.pipe, self.arch = pipe, arch


@pytest.fixture
def fake_sdxl_backend(monkeypatch):
    """Stands in for ``spare_core.backends.sdxl_backend`` so that the dispatch is tested on its own."""
    import sys
    import types

    module = types.ModuleType("spare_core.backends.sdxl_backend")
    module.SDXLBackend = _FakeSDXLBackend
    monkeypatch.setitem(sys.modules, "spare_core.backends.sdxl_backend", module)
    return _FakeSDXLBackend


def test_sdxl_files_and_folders_dispatch_to_the_sdxl_backend(tmp_path, fake_sdxl_backend, no_network):
    path = tmp_path / "sdxl.safetensors"
    write_checkpoint(path, build_modules("sdxl"))
    backend = open_model(str(path))
    assert isinstance(backend, fake_sdxl_backend) and backend.arch == "sdxl"
    assert type(backend.pipe).__name__ == "StableDiffusionXLPipeline"
    folder = tmp_path / "sdxl_folder"
    backend.pipe.save_pretrained(str(folder))
    from_folder = open_model(str(folder))
    assert isinstance(from_folder, fake_sdxl_backend)
    assert type(from_folder.pipe).__name__ == "StableDiffusionXLPipeline"


def test_refiner_and_other_pipeline_folders_are_still_refused(tmp_path):
    folder = tmp_path / "refiner"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionXLImg2ImgPipeline"}')
    with pytest.raises(ModelError, match="holds a StableDiffusionXLImg2ImgPipeline; SPARE opens"):
        open_model(str(folder))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "version", "other_spelling"),
    [
        ("sd1", "sd_v1", ("input_blocks", "middle_block", "output_blocks")),
        ("sdxl", "sdxl", ("down_blocks", "up_blocks")),
    ],
)
def test_spare_erase_on_a_checkpoint_file_writes_a_lora_for_it(
    tmp_path, capsys, no_network, arch, version, other_spelling
):
    """A user's path through the command line: a .safetensors checkpoint in, a LoRA for that architecture out."""
    from tiny import TINY_ARGV

    from spare_core import read_lora
    from spare_core.cli import main

    checkpoint = tmp_path / "my model.safetensors"
    write_checkpoint(checkpoint, build_modules(arch))
    out = tmp_path / "erased.safetensors"
    argv = ["erase", "--model", str(checkpoint), "--concept", "a cat", "--surrogate", "a dog", *TINY_ARGV]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    lora = read_lora(out)
    assert lora.metadata["ss_base_model_version"].startswith(version)
    assert lora.config().base_model == str(checkpoint)
    assert lora.layers() and not any(word in layer for layer in lora.layers() for word in other_spelling)
    backend = open_model(str(checkpoint))
    adapter = lora.adapter(backend)
    assert sorted(adapter.module_names) == sorted(json.loads(lora.metadata["spare_modules"]))
