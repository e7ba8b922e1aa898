"""The ComfyUI test double checked against hand-computed values and ComfyUI's documented rules.

Every call runs under ``torch.inference_mode()``, as ComfyUI runs nodes.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from safetensors.torch import save_file
from unet_configs import full_size

# SD1.5's UNet layout (the config SPARE ships for SD 1.x checkpoint files).
SD15_LAYOUT = full_size("sd1")


@pytest.fixture(autouse=True)
def _inference_mode():
    with torch.inference_mode():
        yield


def test_sd1_sigmas_from_the_scaled_linear_betas(comfy_double):
    from comfy.model_sampling import EPS, ModelSamplingDiscrete

    class Sampling(ModelSamplingDiscrete, EPS):
        pass

    s = Sampling()  # ComfyUI defaults: "linear" (sqrt-space) betas 0.00085..0.012 over 1000 steps
    assert s.sigmas.shape == (1000,)
    assert s.sigma_min.item() == pytest.approx(0.0292, abs=1e-4)
    assert s.sigma_max.item() == pytest.approx(14.6146, abs=1e-4)
    # sigma_0 by hand: beta_0 = 0.00085, a_0 = 1 - beta_0, sigma = sqrt((1 - a) / a)
    assert s.sigmas[0].item() == pytest.approx(math.sqrt(0.00085 / (1 - 0.00085)), rel=1e-5)
    t = torch.tensor([0, 10, 500, 999])
    assert torch.equal(s.timestep(s.sigma(t)), t)
    mid = s.sigma(torch.tensor(0.5))  # log-linear between sigma_0 and sigma_1
    assert mid.item() == pytest.approx(math.sqrt(s.sigmas[0].item() * s.sigmas[1].item()), rel=1e-5)


def test_eps_and_v_formulas(comfy_double):
    from comfy.model_sampling import EPS, V_PREDICTION, ModelSamplingDiscrete

    class E(ModelSamplingDiscrete, EPS):
        pass

    class V(ModelSamplingDiscrete, V_PREDICTION):
        pass

    sigma = torch.tensor([2.0])
    x, out = torch.full((1, 1, 1, 1), 3.0), torch.full((1, 1, 1, 1), 0.5)
    e, v = E(), V()
    assert e.calculate_input(sigma, x).item() == pytest.approx(3.0 / math.sqrt(5.0))
    assert e.calculate_denoised(sigma, out, x).item() == pytest.approx(3.0 - 2.0 * 0.5)  # x0 = x - sigma eps
    assert v.calculate_denoised(sigma, out, x).item() == pytest.approx(3.0 / 5.0 - 0.5 * 2.0 / math.sqrt(5.0))
    noise, latent = torch.full((1, 1, 1, 1), 1.5), torch.full((1, 1, 1, 1), -1.0)
    assert e.noise_scaling(sigma, noise, latent).item() == pytest.approx(-1.0 + 2.0 * 1.5)
    assert e.noise_scaling(sigma, noise, latent, max_denoise=True).item() == pytest.approx(-1.0 + math.sqrt(5.0) * 1.5)


def test_interrupt(comfy_double):
    import comfy.model_management as mm

    assert issubclass(mm.InterruptProcessingException, BaseException)
    # Faithful to ComfyUI (Oct 2025): an Exception too, so `except Exception` catches it.
    assert issubclass(mm.InterruptProcessingException, Exception)
    mm.throw_exception_if_processing_interrupted()  # nothing pending
    mm.interrupt_current_processing()
    assert mm.processing_interrupted()
    with pytest.raises(mm.InterruptProcessingException):
        mm.throw_exception_if_processing_interrupted()
    mm.throw_exception_if_processing_interrupted()  # raised once, then reset


def _toy_x(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.model.model_config.unet_config["in_channels"]
    return torch.randn((1, c, 16, 16), generator=g), torch.randn((1, 77, 64), generator=g)


def test_apply_model_is_the_diffusers_unet_in_sigma_space(comfy_toy):
    model = comfy_toy[0]
    unet = model.model.diffusion_model._diffusers
    sampling = model.get_model_object("model_sampling")
    x, context = _toy_x(model)
    sigma = sampling.sigmas[400].view(1)
    denoised = model.model.apply_model(x, sigma, c_crossattn=context)
    v = unet(x / torch.sqrt(sigma**2 + 1), torch.tensor([400]), encoder_hidden_states=context).sample
    expected = x / (sigma**2 + 1) - v * sigma / torch.sqrt(sigma**2 + 1)  # V_PREDICTION
    torch.testing.assert_close(denoised, expected, atol=1e-5, rtol=1e-5)


def test_compvis_names_reach_the_diffusers_modules(comfy_toy):
    model = comfy_toy[0]
    tree = model.model.diffusion_model
    unet = tree._diffusers
    modules = dict(tree.named_modules())
    assert modules["input_blocks.0.0"] is unet.conv_in
    assert modules["input_blocks.3.1.transformer_blocks.0.attn2.to_k"] is (
        unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k
    )
    assert modules["input_blocks.2.0.op"] is unet.down_blocks[0].downsamplers[0].conv
    assert modules["middle_block.2.out_layers.3"] is unet.mid_block.resnets[1].conv2
    assert modules["output_blocks.3.2.conv"] is unet.up_blocks[1].upsamplers[0].conv
    assert modules["out.2"] is unet.conv_out
    assert not any(name.startswith(("down_blocks", "up_blocks", "mid_block")) for name in modules)


def test_sd15_unet_to_diffusers_numbering(comfy_double):
    from comfy.utils import unet_to_diffusers

    table = unet_to_diffusers(comfy_double.comfy_unet_config(SD15_LAYOUT))
    expected = {  # hand-written from ComfyUI's SD1.5 block numbering
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "down_blocks.1.resnets.0.conv_shortcut.weight": "input_blocks.4.0.skip_connection.weight",
        "down_blocks.2.downsamplers.0.conv.weight": "input_blocks.9.0.op.weight",
        "mid_block.resnets.1.conv2.bias": "middle_block.2.out_layers.3.bias",
        "up_blocks.0.upsamplers.0.conv.weight": "output_blocks.2.1.conv.weight",
        "up_blocks.1.upsamplers.0.conv.weight": "output_blocks.5.2.conv.weight",
        "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0.weight": "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0.weight",
        "time_embedding.linear_2.weight": "time_embed.2.weight",
        "conv_out.weight": "out.2.weight",
    }
    for diffusers, compvis in expected.items():
        assert table[diffusers] == compvis
    assert not any(k.startswith("up_blocks.0.attentions") for k in table)  # UpBlock2D has no attentions


def _lora_pair(weight: torch.Tensor, rank: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    out, inp = weight.shape[0], weight[0].numel()
    down = (
        torch.randn((rank, *weight.shape[1:]), generator=g)
        if weight.dim() == 4
        else torch.randn((rank, inp), generator=g)
    )
    up = torch.randn((out, rank, 1, 1) if weight.dim() == 4 else (out, rank), generator=g)
    return up, down


def test_kohya_lora_keys_patch_the_weights_comfyui_says_on_the_clone_only(comfy_double, comfy_toy, tmp_path, caplog):
    import comfy.model_management as mm
    import comfy.sd
    import comfy.utils

    model = comfy_toy[0]
    mm.unload_all_models()
    # kohya layer -> the weight ComfyUI's rules say it patches (diffusers and CompVis spellings), by hand.
    targets = {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": "input_blocks.3.1.transformer_blocks.0.attn2.to_k",
        "lora_unet_mid_block_resnets_0_conv1": "middle_block.0.in_layers.2",
        "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_attn2_to_out_0": "output_blocks.1.1.transformer_blocks.0.attn2.to_out.0",
        "lora_unet_down_blocks_0_downsamplers_0_conv": "input_blocks.2.0.op",
        "lora_unet_input_blocks_5_1_proj_in": "input_blocks.5.1.proj_in",
    }
    sd, rank, alpha = {}, 2, 1.0
    originals = {}
    for i, (layer, module) in enumerate(targets.items()):
        weight = comfy.utils.get_attr(model.model.diffusion_model, module + ".weight")
        originals[module] = weight.clone()
        up, down = _lora_pair(weight, rank, i)
        sd[f"{layer}.lora_up.weight"], sd[f"{layer}.lora_down.weight"] = up, down
        sd[f"{layer}.alpha"] = torch.tensor(alpha)
    sd["lora_unet_no_such_module.lora_up.weight"] = torch.zeros(1, 1)
    path = tmp_path / "erase.safetensors"
    save_file(sd, str(path))
    lora = comfy.utils.load_torch_file(str(path), safe_load=True)
    with caplog.at_level(logging.WARNING):
        patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 0.5, 0.0)
    assert "lora key not loaded: lora_unet_no_such_module.lora_up.weight" in caplog.text
    assert sorted(patched.patches) == sorted(f"diffusion_model.{m}.weight" for m in targets.values())
    assert model.patches == {}  # the input MODEL has no patches
    assert patched.model is model.model  # ...but shares the model

    x, context = _toy_x(model, seed=5)
    sigma = model.get_model_object("model_sampling").sigmas[300].view(1)
    before = comfy_double.model_output(model, x, sigma, context)
    comfy_double.model_output(patched, x, sigma, context)
    unet = model.model.diffusion_model
    for i, module in enumerate(targets.values()):
        up, down = _lora_pair(originals[module], rank, i)
        delta = 0.5 * (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(originals[module].shape)
        torch.testing.assert_close(comfy.utils.get_attr(unet, module + ".weight"), originals[module] + delta)
    # Loading the input MODEL again restores its weights, and its output.
    after = comfy_double.model_output(model, x, sigma, context)
    for module, weight in originals.items():
        torch.testing.assert_close(comfy.utils.get_attr(unet, module + ".weight"), weight, atol=0, rtol=0)
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_clone_shares_weights_not_patches(comfy_toy):
    model = comfy_toy[0]
    clone = model.clone()
    assert clone.model is model.model
    key = "diffusion_model.input_blocks.0.0.weight"
    clone.add_patches({key: ("diff", (torch.ones_like(model.model_state_dict()[key]),))}, 1.0)
    assert key in clone.patches and key not in model.patches
    clone.model_options["transformer_options"]["x"] = 1
    assert "x" not in model.model_options["transformer_options"]


def test_clip_as_comfyui_encodes(comfy_toy, toy_pipe):
    clip = comfy_toy[1]
    tokens = clip.tokenize("a circle in red style")
    assert list(tokens) == ["l"] and len(tokens["l"]) == 1
    assert all(w == 1.0 for _, w in tokens["l"][0]) and len(tokens["l"][0]) == toy_pipe.tokenizer.model_max_length
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    assert cond.shape == (1, toy_pipe.tokenizer.model_max_length, 64) and pooled.shape == (1, 64)
    [[cond2, extra]] = clip.encode_from_tokens_scheduled(tokens)
    torch.testing.assert_close(cond2, cond)
    torch.testing.assert_close(extra["pooled_output"], pooled)


def test_vae_conventions(comfy_toy):
    vae = comfy_toy[2]
    pixels = torch.rand((2, 32, 32, 3), generator=torch.Generator().manual_seed(0))
    latents = vae.encode(pixels)
    assert latents.shape == (2, 12, 16, 16)
    images = vae.decode(latents)
    assert images.shape == (2, 32, 32, 3) and images.min() >= 0 and images.max() <= 1


def test_progress_bar_records_and_clamps(comfy_double):
    import comfy.utils

    comfy.utils.progress_calls.clear()
    bar = comfy.utils.ProgressBar(3, node_id="7")
    bar.update(1)
    bar.update_absolute(5)
    assert comfy.utils.progress_calls == [(1, 3, None, "7"), (3, 3, None, "7")]
    assert comfy.utils.PROGRESS_BAR_ENABLED


def test_folder_paths_and_server(comfy_double):
    import folder_paths
    import server

    lora_dir = folder_paths.get_folder_paths("loras")[0]
    with open(f"{lora_dir}/a.safetensors", "wb") as f:
        f.write(b"x")
    with open(f"{lora_dir}/notes.txt", "w") as f:
        f.write("x")
    assert "a.safetensors" in folder_paths.get_filename_list("loras")
    assert "notes.txt" not in folder_paths.get_filename_list("loras")
    assert folder_paths.get_full_path("loras", "a.safetensors") == f"{lora_dir}/a.safetensors"
    assert folder_paths.get_full_path("loras", "missing.safetensors") is None
    assert folder_paths.get_output_directory()
    server.PromptServer.instance.send_sync("progress", {"value": 1}, sid="c")
    assert server.PromptServer.instance.messages[-1] == ("progress", {"value": 1}, "c")


def test_v3_node_schema_and_execution(comfy_double):
    import types

    import folder_paths
    from comfy_api.latest import ComfyExtension, io, ui

    Lora = io.Custom("SPARE_LORA")

    class Node(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(
                node_id="TestNode",
                display_name="Test node",
                category="test",
                inputs=[
                    io.Model.Input("model"),
                    io.Int.Input("steps", default=4, min=1, max=10, step=1, tooltip="how many"),
                    io.Float.Input("lr", default=1e-3, min=0.0, max=1.0, step=1e-4),
                    io.String.Input("concept", multiline=True, default="red"),
                    io.Boolean.Input("flag", default=False, optional=True),
                    io.Combo.Input("scope", options=["all", "cross"], default="cross"),
                ],
                outputs=[io.Model.Output(), Lora.Output(display_name="lora"), io.Image.Output()],
                hidden=[io.Hidden.unique_id],
                is_output_node=True,
            )

        @classmethod
        def execute(cls, model, steps, lr, concept, scope, flag=False):
            image = torch.zeros((1, 8, 8, 3))
            return io.NodeOutput(
                model, {"steps": steps, "id": cls.hidden.unique_id}, image, ui=ui.PreviewImage(image, cls=cls)
            )

    schema = Node.GET_SCHEMA()
    assert schema.inputs[1].as_dict() == {
        "default": 4,
        "min": 1,
        "max": 10,
        "step": 1,
        "tooltip": "how many",
        "optional": False,
    }
    assert schema.inputs[1].io_type == "INT" and schema.outputs[1].io_type == "SPARE_LORA"
    assert schema.outputs[0].id == "_0_MODEL_"  # finalize names unnamed outputs
    assert io.Hidden.prompt in schema.hidden  # output nodes get prompt and extra_pnginfo
    with pytest.raises(TypeError):
        io.Int.Input("x", advanced=True)  # ComfyUI's _io.py has no `advanced` option
    with pytest.raises(ValueError):
        io.Schema(node_id="Dup", inputs=[io.Int.Input("a"), io.Int.Input("a")]).validate()

    out = comfy_double.execute_node(
        Node, hidden={io.Hidden.unique_id: "42"}, model="M", steps=3, lr=0.1, concept="red", scope="all"
    )
    assert out.result[0] == "M" and out.result[1] == {"steps": 3, "id": "42"}
    saved = out.ui.as_dict()["images"][0]
    assert saved["type"] == "temp"
    assert (folder_paths.get_temp_directory() + "/" + saved["filename"]).endswith(".png")

    class Extension(ComfyExtension):
        async def get_node_list(self):
            return [Node]

    async def comfy_entrypoint():
        return Extension()

    pack = types.SimpleNamespace(comfy_entrypoint=comfy_entrypoint)
    assert comfy_double.load_extension(pack) == {"TestNode": Node}
