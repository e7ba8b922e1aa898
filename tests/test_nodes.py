"""The SPARE nodes inside (a faithful double of) ComfyUI: loading, inputs from the schema, a whole erasure, cancel.

ComfyUI itself is not installed: ``tests/comfy/double`` stands in for the parts
the pack touches (see ``tests/comfy/SOURCES.md``). Nodes run as ComfyUI runs
them: a class clone with hidden inputs, inside ``torch.inference_mode()``, on
models whose weights are inference tensors.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY_SETTINGS

from spare_core import SETTINGS, ErasureConfig, read_lora
from spare_core.toy.erasure_eval import evaluation_grid, score
from spare_core.toy.world import EVAL_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
NODE_IDS = {
    "SPARE_TimestepProfile": "SPARE Timestep Profile",
    "SPARE_ComputeSaliency": "SPARE Compute Saliency",
    "SPARE_TrainAdapter": "Train SPARE Adapter",
    "SPARE_ApplySparseLoRA": "Apply Sparse LoRA",
    "SPARE_BeforeAfter": "SPARE Before/After",
}


@pytest.fixture(scope="module")
def pack(comfy_pack):
    """The nodes of the pack by id, loaded the way ComfyUI loads a custom-node folder (conftest ``comfy_pack``)."""
    return comfy_pack


def _run(comfy_double, node, **inputs):
    return comfy_double.execute_node(node, **inputs)


def _loras(comfy_double) -> list[Path]:
    import folder_paths

    return sorted(p for p in Path(folder_paths.get_folder_paths("loras")[0]).rglob("*") if p.is_file())


def test_the_pack_loads_its_five_nodes_through_the_v3_entry_point(pack):
    assert {node_id: cls.GET_SCHEMA().display_name for node_id, cls in pack.items()} == NODE_IDS
    assert all(cls.GET_SCHEMA().category == "SPARE" for cls in pack.values())


def test_every_setting_input_is_the_schemas_own(pack):
    inputs = {i.id: i for i in pack["SPARE_TrainAdapter"].GET_SCHEMA().inputs}
    for s in SETTINGS:
        if s.kind == "list" or s.name.endswith("image_dir"):
            continue
        widget = inputs[s.name]
        assert widget.default == s.default, s.name
        assert s.help in widget.tooltip, s.name
        if s.kind in ("int", "float"):
            assert (widget.min, widget.max) == (s.minimum, s.maximum), s.name
        if s.kind == "choice":
            assert list(widget.options) == list(s.choices), s.name
        # The node definition marks advanced settings; the front end folds them.
        assert widget.as_dict().get("advanced", False) is s.advanced, s.name


def _model_output(comfy_double, model, clip):
    with torch.inference_mode():
        x = torch.randn((1, 12, 16, 16), generator=torch.Generator().manual_seed(5)) * 3
        context = clip.encode_from_tokens(clip.tokenize("a circle image in red style"))
        sigma = model.get_model_object("model_sampling").sigmas[500].view(1)
        return comfy_double.model_output(model, x, sigma, context)


@pytest.mark.slow
def test_a_whole_erasure_through_the_nodes_erases_and_leaves_the_input_model_alone(
    pack, comfy_double, comfy_toy, toy_backend, toy_classifiers, tmp_path
):
    import server

    comfy_double.configure(tmp_path)  # an empty models folder, no messages yet
    model, clip, vae = comfy_toy
    before = _model_output(comfy_double, model, clip)
    common = dict(model=model, clip=clip, vae=vae)
    data, profile, plot = _run(
        comfy_double, pack["SPARE_TimestepProfile"], **common, concepts="red", surrogates="plain"
    ).result
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and 0 <= plot.min() and plot.max() <= 1
    saliency, chart = _run(comfy_double, pack["SPARE_ComputeSaliency"], **common, data=data, profile=profile).result
    assert len(saliency.selected) == ErasureConfig([]).top_k
    out = _run(
        comfy_double, pack["SPARE_TrainAdapter"], **common, data=data, profile=profile, saliency=saliency,
        file_name="red erased",
    )  # fmt: skip
    patched, lora, curve = out.result
    (written,) = _loras(comfy_double)
    assert written.parent.name == "spare" and written.name == "red_erased.safetensors"
    assert written.read_bytes() == lora.to_bytes()
    # The input MODEL computes exactly what it did before; the output carries the LoRA as patches.
    assert torch.equal(_model_output(comfy_double, model, clip), before)
    assert not model.patches and patched.patches
    assert not torch.equal(_model_output(comfy_double, patched, clip), before)
    messages = [(event, data) for event, data, _ in server.PromptServer.instance.messages]
    assert {"spare.progress", "spare.done"} <= {event for event, _ in messages}
    assert (
        "spare.done",
        {"node": "1", "lora_path": str(written), "lora_name": "spare/red_erased.safetensors"},
    ) in messages
    stages = {data["stage"] for event, data in messages if event == "spare.progress"}
    assert stages == {"data", "profile", "saliency", "train"}
    import comfy.utils

    # ComfyUI's progress bar went through every stage: 120 training steps among its updates.
    assert (120, 120, None, None) in comfy.utils.progress_calls and len(comfy.utils.progress_calls) > 120

    # The file erases red on the toy model (judged on the diffusers path with the toy classifiers).
    seeds = [21, 22, 23, 24]
    base = evaluation_grid(toy_backend, toy_classifiers, seeds)
    with read_lora(written).adapter(toy_backend).applied():
        after = evaluation_grid(toy_backend, toy_classifiers, seeds)
    (b,), (a,) = score(base, lora.config().concepts), score(after, lora.config().concepts)
    assert a.erased_generations >= 24 and len(base.images) - a.erased_generations >= 40
    assert a.ua >= 0.9, a
    assert a.ira >= b.ira - 0.05 and a.cra >= b.cra - 0.05, (b, a)

    # Apply Sparse LoRA from the loras list equals the Train node's own output.
    applied, _ = _run(comfy_double, pack["SPARE_ApplySparseLoRA"], model=model, clip=clip,
                      lora_name="spare/red_erased.safetensors", strength=1.0).result  # fmt: skip
    assert torch.allclose(_model_output(comfy_double, applied, clip), _model_output(comfy_double, patched, clip))
    assert torch.equal(_model_output(comfy_double, model, clip), before)


def test_cancel_stops_training_and_leaves_no_file(pack, comfy_double, comfy_toy, tmp_path):
    import comfy.model_management
    import server

    model, clip, vae = comfy_toy
    comfy_double.configure(tmp_path)  # an empty models folder
    sent = server.PromptServer.instance

    def interrupt_during_training(event, data, sid=None):
        sent.messages.append((event, data))
        if event == "spare.progress" and data["stage"] == "train" and data["step"] == 2:
            comfy.model_management.interrupt_current_processing(True)

    sent.send_sync = interrupt_during_training
    inputs = dict(model=model, clip=clip, vae=vae, concepts="yellow", surrogates="plain", file_name="cancelled")
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        _run(comfy_double, pack["SPARE_TrainAdapter"], **inputs, **TINY_SETTINGS)
    train_steps = [d["step"] for e, d in sent.messages if e == "spare.progress" and d["stage"] == "train"]
    assert train_steps == [1, 2]  # stopped within one step
    assert _loras(comfy_double) == []
    assert ("spare.error", {"node": "1", "message": "interrupted", "cancelled": True}) in sent.messages


def test_a_file_name_cannot_leave_the_loras_folder(pack, comfy_double):
    import folder_paths

    host = sys.modules["spare_pack_test_nodes.spare_nodes.host"]  # comfy_pack names the package
    loras = Path(folder_paths.get_folder_paths("loras")[0]) / "spare"
    for name in ("../../x", "..\\..\\evil.safetensors", "/etc/passwd", "  ", ".hidden", "ok name!.safetensors"):
        path = host.lora_destination(name)
        assert path.parent == loras and path.suffix == ".safetensors", (name, path)
        assert not path.name.startswith(".")
    loras.mkdir(parents=True, exist_ok=True)
    (loras / "x.safetensors").write_bytes(b"taken")
    assert host.lora_destination("x").name == "x_1.safetensors"  # never overwrites


def test_before_after_puts_the_two_batches_side_by_side(pack, comfy_double):
    before, after = torch.zeros(2, 64, 48, 3), torch.ones(2, 64, 48, 3)
    (image,) = _run(comfy_double, pack["SPARE_BeforeAfter"], before=before, after=after,
                    before_label="base", after_label="erased").result  # fmt: skip
    assert image.shape[0] == 1 and image.shape[1] >= 2 * 64 and image.shape[2] >= 2 * 48
    with pytest.raises(ValueError, match="same size"):
        _run(comfy_double, pack["SPARE_BeforeAfter"], before=before, after=torch.ones(2, 32, 32, 3))


CORE_NODES = {  # ComfyUI's nodes.py NODE_CLASS_MAPPINGS entries the example uses, with their socket types
    "CheckpointLoaderSimple": ({}, ["MODEL", "CLIP", "VAE"]),
    "CLIPTextEncode": ({"clip": "CLIP"}, ["CONDITIONING"]),
    "EmptyLatentImage": ({}, ["LATENT"]),
    "KSampler": (
        {"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT"},
        ["LATENT"],
    ),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ["IMAGE"]),
}


def _sockets(node_cls):
    schema = node_cls.GET_SCHEMA()
    inputs = {i.id: i.get_io_type() for i in schema.inputs}
    return inputs, [o.get_io_type() for o in schema.outputs]


def test_the_example_workflow_uses_real_nodes_matching_links_and_one_seed(pack):
    workflow = json.loads((ROOT / "example_workflows" / "spare_erase.json").read_text())
    nodes = {n["id"]: n for n in workflow["nodes"]}
    types = {n["type"] for n in nodes.values()}
    assert set(NODE_IDS) - {"SPARE_BeforeAfter"} <= types and "SPARE_BeforeAfter" in types
    sockets = {**CORE_NODES, **{node_id: _sockets(cls) for node_id, cls in pack.items()}}
    assert types <= set(sockets), types - set(sockets)
    for link_id, src, src_slot, dst, dst_slot, link_type in workflow["links"]:
        src_node, dst_node = nodes[src], nodes[dst]
        out_type = sockets[src_node["type"]][1][src_slot]
        in_name = dst_node["inputs"][dst_slot]["name"]
        assert out_type == link_type == sockets[dst_node["type"]][0][in_name], (link_id, src_node["type"], in_name)
        assert dst_node["inputs"][dst_slot]["link"] == link_id
    for node in nodes.values():  # every required socket is connected
        if node["type"] in pack:
            schema = pack[node["type"]].GET_SCHEMA()
            connected = {i["name"] for i in node["inputs"] if i["link"] is not None}
            required = {i.id for i in schema.inputs if not i.optional and i.get_io_type() in
                        ("MODEL", "CLIP", "VAE", "IMAGE")}  # fmt: skip
            assert required <= connected, (node["type"], required - connected)
    seeds = {n["widgets_values"][0] for n in nodes.values() if n["type"] == "KSampler"}
    assert len([n for n in nodes.values() if n["type"] == "KSampler"]) == 2 and len(seeds) == 1
    assert EVAL_TEMPLATE  # the toy template is unrelated; the workflow targets a real checkpoint


def test_the_train_node_takes_the_users_own_forget_images(pack, comfy_double, comfy_toy, tmp_path):
    comfy_double.configure(tmp_path)
    model, clip, vae = comfy_toy
    images = torch.rand(4, 48, 40, 3)  # a ComfyUI IMAGE batch of another size than the model's
    inputs = dict(model=model, clip=clip, vae=vae, concepts="yellow", surrogates="plain", file_name="own images")
    patched, lora, curve = _run(comfy_double, pack["SPARE_TrainAdapter"], **inputs, forget_images=images,
                                **TINY_SETTINGS).result  # fmt: skip
    assert lora.config().concepts[0].concept == "yellow" and len(lora.layers()) == ErasureConfig([]).top_k
    assert [p.name for p in _loras(comfy_double)] == ["own_images.safetensors"]
    data = object()
    with pytest.raises(ValueError, match="disconnect either"):
        _run(comfy_double, pack["SPARE_TrainAdapter"], **inputs, data=data, forget_images=images)


def test_the_sets_are_drawn_with_the_nodes_sampler_and_scheduler(pack, comfy_double, comfy_toy, monkeypatch):
    import comfy.sample

    calls, real = [], comfy.sample.sample

    def recording(model, noise, steps, cfg, sampler_name, scheduler, *args, **kwargs):
        calls.append((sampler_name, scheduler, steps, cfg))
        return real(model, noise, steps, cfg, sampler_name, scheduler, *args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", recording)
    model, clip, vae = comfy_toy
    tiny = {k: v for k, v in TINY_SETTINGS.items() if k != "steps"}
    data, profile, _ = _run(comfy_double, pack["SPARE_TimestepProfile"], model=model, clip=clip, vae=vae,
                            concepts="yellow", surrogates="plain", sampler_name="euler", scheduler="simple",
                            **tiny).result  # fmt: skip
    assert calls and set(calls) == {("euler", "simple", tiny["sample_steps"], 5.0)}
    assert len(data.sets.data.forget_latents) == 20 and profile.concept
    schema_inputs = {i.id: i for i in pack["SPARE_TimestepProfile"].GET_SCHEMA().inputs}
    assert "dpmpp_2m" in schema_inputs["sampler_name"].options and "karras" in schema_inputs["scheduler"].options
