"""The SPARE nodes (ComfyUI's V3 schema API): thin forms over the engine's stage calls.

SPARE Timestep Profile -> SPARE Compute Saliency -> Train SPARE Adapter -> Apply Sparse LoRA,
and SPARE Before/After to compare two generations on the same seed. Every
setting input is generated from the engine's settings schema. All work is the
engine's; these classes turn inputs into calls and results into ComfyUI values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from comfy_api.latest import io, ui

from . import host
from ._engine import engine
from .comfy_backend import ComfyBackend
from .inputs import config_from_inputs, lines, setting_inputs

logger = logging.getLogger(__name__)

CATEGORY = "SPARE"
SpareData = io.Custom("SPARE_DATA")
SpareProfile = io.Custom("SPARE_PROFILE")
SpareSaliency = io.Custom("SPARE_SALIENCY")
SpareLora = io.Custom("SPARE_LORA")

#: Settings each node shows (by the schema's groups); the Train node shows them all.
#: The model-level settings (resolution, prediction) shape the sets, so they travel with the data too.
DATA_SETTINGS = tuple(s.name for s in engine.SETTINGS if s.group in ("data", "timesteps", "model")) + ("seed",)
SALIENCY_SETTINGS = tuple(s.name for s in engine.SETTINGS if s.group == "saliency")


@dataclass
class ErasureData:
    """What flows on a SPARE_DATA link: the settings the sets were made with, and the sets."""

    config: object  # engine.ErasureConfig
    sets: object  # engine.ErasureSets


def _concept_inputs(optional: bool = False) -> list[io.Input]:
    return [
        io.String.Input(
            "concepts", multiline=True, optional=optional, default="" if optional else "Van Gogh",
            tooltip="concepts to erase, one per line",
        ),
        io.String.Input(
            "surrogates", multiline=True, optional=optional, default="" if optional else "a painter",
            tooltip="what to draw instead, one per line in the same order (or one for all)",
        ),
    ]  # fmt: skip


#: Extra keyword arguments for every ComfyBackend the nodes make (tests use it to run the toy model).
BACKEND_OPTIONS: dict = {}


def _backend(
    model, clip, vae, image_size: int = 0, sampler_name: str = "euler", scheduler: str = "normal"
) -> ComfyBackend:
    options = dict(BACKEND_OPTIONS)
    if image_size:
        options.setdefault("image_size", image_size)
    return ComfyBackend(model, clip, vae=vae, sampler_name=sampler_name, scheduler=scheduler, **options)


def _drawing_inputs() -> list[io.Input]:
    """How the sets are drawn: their image size, and ComfyUI's sampler and scheduler (defaults: the engine's)."""
    import comfy.samplers

    return [
        _image_size_input(),
        io.Combo.Input(
            "sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler", optional=True,
            tooltip="ComfyUI sampler that draws the forget, surrogate and retain images",
        ),
        io.Combo.Input(
            "scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="normal", optional=True,
            tooltip="ComfyUI scheduler that draws the forget, surrogate and retain images",
        ),
    ]  # fmt: skip


def _image_size_input() -> io.Input:
    return io.Int.Input(
        "image_size", default=0, min=0, max=2048, step=64, optional=True,
        tooltip="the checkpoint's native image side in pixels (0: 512 for SD 1.x/2.x, 1024 for SDXL; "
        "768 for SD 2.x 768-v models); the resolution setting may draw and train smaller",
    )  # fmt: skip


def _model_inputs() -> list[io.Input]:
    return [
        io.Model.Input("model"),
        io.Clip.Input("clip"),
        io.Vae.Input("vae", tooltip="the checkpoint's VAE: the sets are drawn as images and encoded with it"),
    ]


def _prepare(backend: ComfyBackend, unique_id, concepts: str, surrogates: str, **settings) -> ErasureData:
    config = config_from_inputs(concepts, surrogates, base_model="comfyui", **settings)
    sets = host.run_stage(unique_id, engine.prepare_sets, backend, config)
    return ErasureData(config, sets)


class TimestepProfile(io.ComfyNode):
    """Draw the forget, surrogate and retain sets once, and measure where in t the concept is decided."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPARE_TimestepProfile",
            display_name="SPARE Timestep Profile",
            category=CATEGORY,
            description=cls.__doc__,
            inputs=[
                *_model_inputs(),
                *_concept_inputs(),
                io.String.Input(
                    "prompts",
                    multiline=True,
                    optional=True,
                    default="",
                    tooltip="forget prompts, one per line, each naming its concept (empty: automatic)",
                ),
                io.String.Input(
                    "retain_prompts",
                    multiline=True,
                    optional=True,
                    default="",
                    tooltip="prompts that must not change, one per line (empty: automatic)",
                ),
                *_drawing_inputs(),
                *setting_inputs(DATA_SETTINGS),
            ],  # fmt: skip
            outputs=[SpareData.Output("data"), SpareProfile.Output("profile"), io.Image.Output("plot")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls, model, clip, vae, concepts, surrogates, prompts="", retain_prompts="", **settings
    ) -> io.NodeOutput:
        unique_id = cls.hidden.unique_id if cls.hidden is not None else None
        settings.update(forget_prompts=lines(prompts), retain_prompts=lines(retain_prompts))
        drawing = {k: settings.pop(k) for k in ("image_size", "sampler_name", "scheduler") if k in settings}
        backend = _backend(model, clip, vae, **drawing)
        data = _prepare(backend, unique_id, concepts, surrogates, **settings)
        profile = host.run_stage(unique_id, engine.measure_profile, backend, data.config, data.sets)
        plot = host.plot_to_comfy(lambda path: engine.plot_profile(profile, path))
        return io.NodeOutput(data, profile, plot, ui=ui.PreviewImage(plot, cls=cls))


class ComputeSaliency(io.ComfyNode):
    """Rank the UNet's modules by how much they carry the concept, and choose those the LoRA will train."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPARE_ComputeSaliency",
            display_name="SPARE Compute Saliency",
            category=CATEGORY,
            description=cls.__doc__,
            inputs=[
                *_model_inputs(),
                SpareData.Input("data", optional=True, tooltip="the sets from SPARE Timestep Profile"),
                *_concept_inputs(optional=True),
                SpareProfile.Input("profile", optional=True),
                *setting_inputs(SALIENCY_SETTINGS),
            ],
            outputs=[SpareSaliency.Output("saliency"), io.Image.Output("chart")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls, model, clip, vae, data=None, concepts="", surrogates="", profile=None, **settings
    ) -> io.NodeOutput:
        unique_id = cls.hidden.unique_id if cls.hidden is not None else None
        backend = _backend(model, clip, vae)
        if data is None:
            data = _prepare(backend, unique_id, concepts, surrogates)
        config = data.config.with_settings(**settings).validate()
        saliency = host.run_stage(unique_id, engine.select_modules, backend, config, data.sets, profile)
        chart = host.plot_to_comfy(lambda path: engine.plot_saliency(saliency, path, saliency.selected))
        return io.NodeOutput(saliency, chart, ui=ui.PreviewImage(chart, cls=cls))


class TrainAdapter(io.ComfyNode):
    """Train a sparse LoRA that erases the concepts, write it to models/loras/spare/, and apply it."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPARE_TrainAdapter",
            display_name="Train SPARE Adapter",
            category=CATEGORY,
            description=cls.__doc__,
            is_output_node=True,
            inputs=[
                *_model_inputs(),
                *_concept_inputs(optional=True),
                SpareData.Input("data", optional=True, tooltip="the sets (and their settings) from the Profile node"),
                SpareProfile.Input("profile", optional=True),
                SpareSaliency.Input("saliency", optional=True, tooltip="computed here when not connected"),
                io.String.Input(
                    "retain_prompts",
                    multiline=True,
                    optional=True,
                    default="",
                    tooltip="prompts that must not change, one per line (empty: automatic)",
                ),
                io.Image.Input(
                    "forget_images",
                    optional=True,
                    tooltip="your own images of the concept, used instead of generated ones (without SPARE_DATA)",
                ),
                io.String.Input("file_name", default="spare_erasure", tooltip="name of the LoRA under loras/spare/"),
                *_drawing_inputs(),
                *setting_inputs(),
            ],  # fmt: skip
            outputs=[
                io.Model.Output("erased_model", display_name="MODEL"),
                SpareLora.Output("lora"),
                io.Image.Output("loss_curve"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls, model, clip, vae, concepts="", surrogates="", data=None, profile=None, saliency=None,
        retain_prompts="", file_name="spare_erasure", image_size=0, sampler_name="euler", scheduler="normal",
        forget_images=None, **settings,
    ) -> io.NodeOutput:  # fmt: skip
        unique_id = cls.hidden.unique_id if cls.hidden is not None else None
        if data is not None and forget_images is not None:
            raise ValueError("forget_images make new sets: disconnect either SPARE_DATA or the forget images")
        backend = _backend(model, clip, vae, image_size, sampler_name, scheduler)
        config = _train_config(data, saliency, concepts, surrogates, retain_prompts, settings)
        path = host.lora_destination(file_name)  # a bad name fails before any work
        result = host.run_stage(
            unique_id, engine.erase, backend, config,
            sets=data.sets if data is not None else None, profile=profile, saliency=saliency,
            forget_images=host.from_comfy_images(forget_images) if forget_images is not None else None,
        )  # fmt: skip
        lora = engine.build_lora(result, backend)
        lora.write(path)
        host.send(host.DONE_MESSAGE, {"node": unique_id, "lora_path": str(path), "lora_name": f"spare/{path.name}"})
        logger.info("SPARE wrote %s", path)
        patched = apply_lora(model, None, lora, 1.0)[0]
        curve = host.plot_to_comfy(lambda p: engine.plot_losses(result.history.losses, p))
        return io.NodeOutput(patched, lora, curve, ui=ui.PreviewImage(curve, cls=cls))


def _train_config(data, saliency, concepts, surrogates, retain_prompts, settings):
    """The Train node's settings: its widgets, the sets' own settings when connected, the saliency's selection."""
    if data is not None:
        kept = {name: getattr(data.config, name) for name in DATA_SETTINGS}
        config = data.config.with_settings(**{**settings, **kept})
    else:
        settings["retain_prompts"] = lines(retain_prompts)
        config = config_from_inputs(concepts, surrogates, base_model="comfyui", **settings)
    if saliency is not None:
        names = {s.name for s in engine.SETTINGS}
        chosen = {k: v for k, v in saliency.settings.items() if k in names}
        config = config.with_settings(**chosen)
    return config.validate()


def apply_lora(model, clip, lora, strength: float):
    """``lora`` on clones of ``model`` (and ``clip``) through ComfyUI's own LoRA patching."""
    import comfy.sd

    return comfy.sd.load_lora_for_models(model, clip, dict(lora.tensors), strength, strength if clip else 0.0)


class ApplySparseLoRA(io.ComfyNode):
    """Apply a SPARE LoRA (from the loras list, or straight from the Train node) at a strength."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        return io.Schema(
            node_id="SPARE_ApplySparseLoRA",
            display_name="Apply Sparse LoRA",
            category=CATEGORY,
            description=cls.__doc__,
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip", optional=True),
                io.Combo.Input("lora_name", options=["[none]", *folder_paths.get_filename_list("loras")]),
                SpareLora.Input("lora", optional=True, tooltip="wins over lora_name when connected"),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05),
            ],
            outputs=[
                io.Model.Output("patched_model", display_name="MODEL"),
                io.Clip.Output("patched_clip", display_name="CLIP"),
            ],
        )

    @classmethod
    def execute(cls, model, lora_name, strength, clip=None, lora=None) -> io.NodeOutput:
        if lora is None:
            if lora_name in (None, "", "[none]"):
                raise ValueError("choose a LoRA from the list, or connect one from Train SPARE Adapter")
            import folder_paths

            lora = engine.read_lora(folder_paths.get_full_path_or_raise("loras", lora_name))
        # A kohya file from another tool may hold text-encoder layers (lora_te_*): ComfyUI's own loader applies
        # them to the CLIP when one is connected; without a CLIP they are left out, with a warning.
        text_layers = lora.text_encoder_layers()
        if text_layers and clip is None:
            logger.warning(
                "%s: %d text-encoder layer(s) not applied (connect a CLIP to apply them): %s",
                lora.source, len(text_layers), ", ".join(sorted(text_layers)[:5]),
            )  # fmt: skip
            lora = engine.Lora(
                {k: v for k, v in lora.tensors.items() if k.partition(".")[0] not in text_layers},
                lora.metadata, lora.source,
            )  # fmt: skip
        patched_model, patched_clip = apply_lora(model, clip, lora, strength)
        return io.NodeOutput(patched_model, patched_clip)


class BeforeAfter(io.ComfyNode):
    """Two image batches side by side with their labels, one row per image: before and after on the same seed."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SPARE_BeforeAfter",
            display_name="SPARE Before/After",
            category=CATEGORY,
            description=cls.__doc__,
            is_output_node=True,
            inputs=[
                io.Image.Input("before"),
                io.Image.Input("after"),
                io.String.Input("before_label", default="before"),
                io.String.Input("after_label", default="after"),
            ],
            outputs=[io.Image.Output("comparison")],
        )

    @classmethod
    def execute(cls, before, after, before_label="before", after_label="after") -> io.NodeOutput:
        if before.shape[1:] != after.shape[1:]:
            raise ValueError(
                f"before is {tuple(before.shape[1:3])} px and after {tuple(after.shape[1:3])} px: "
                "generate both at the same size"
            )
        n = min(len(before), len(after))
        import torch

        pairs = torch.stack([host.from_comfy_images(before[:n]), host.from_comfy_images(after[:n])], dim=1)
        grid = engine.grid_image(pairs.flatten(0, 1), [f"image {i + 1}" for i in range(n)], [before_label, after_label])
        image = host.pil_to_comfy(grid)
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))


NODES = [TimestepProfile, ComputeSaliency, TrainAdapter, ApplySparseLoRA, BeforeAfter]
