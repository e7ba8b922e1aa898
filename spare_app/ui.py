"""The page: gradio widgets generated from the settings schema, wired to :class:`SpareApp`'s actions.

Every tab polls the shared state twice a second and receives only the parts
that changed (``gr.skip()`` for the rest), so a second tab, or a tab opened
after the first was closed, shows the running training and its result.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spare_core import SETTINGS, LoraFileError, ModelError, SettingsError, describe_error

from . import forms
from .session import STAGE_LABELS, TOY_MODEL, ErasureForm, SpareApp, View

#: Settings with a place of their own at the top of the page (the rest are generated into the panels below).
FRONT_SETTINGS = ("steps", "retain_prompts")
#: How often a tab asks for news, in seconds.
POLL_SECONDS = 0.5
#: Errors a user can cause: shown in the page as one line, never as a traceback.
USER_ERRORS = (ValueError, SettingsError, LoraFileError, ModelError, FileNotFoundError, OSError)

CSS = """
#spare-progress progress { width: 100%; height: 14px; }
#spare-progress .spare-stage { font-weight: 600; }
#spare-message { min-height: 1.5em; }
"""


def _gradio():
    # Analytics off before gradio is imported: the app sends nothing anywhere.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    return gr


def _info(setting) -> str:
    return f"{setting.help} ({setting.range_text()})" if setting.range_text() else setting.help


def setting_widget(gr, setting, value: Any = None):
    """The widget of one setting: same default, range, choices and help as the command line's option."""
    value = setting.default if value is None else value
    common = dict(label=setting.name, info=_info(setting), elem_id=f"setting-{setting.name}")
    if setting.kind == "bool":
        return gr.Checkbox(value=value, **common)
    if setting.kind == "choice":
        return gr.Dropdown(choices=list(setting.choices), value=value, **common)
    if setting.kind in ("int", "float"):
        return gr.Number(
            value=value,
            minimum=setting.minimum,
            maximum=setting.maximum,
            precision=0 if setting.kind == "int" else None,
            **common,
        )
    if setting.kind == "list":
        return gr.Textbox(value="\n".join(value), lines=4, max_lines=12, **common)
    return gr.Textbox(value=value, **common)


def progress_html(view: View) -> str:
    """The progress block: the stage, its step of total and a bar (what every tab shows)."""
    p = view.progress
    if view.status != "running":
        return f'<div id="spare-progress-box" data-status="{view.status}"></div>'
    number = p.stages.index(p.stage) + 1 if p.stage in p.stages else 0
    label = STAGE_LABELS.get(p.stage, p.stage)
    steps = f" &middot; {p.step} / {p.total}" if p.total else ""
    return (
        f'<div id="spare-progress-box" data-status="running" data-stage="{html.escape(p.stage)}">'
        f'<div class="spare-stage">Stage {number} of {len(p.stages)}: {html.escape(label)}{steps}</div>'
        f'<progress max="1" value="{p.fraction:.4f}"></progress></div>'
    )


def scores_markdown(scores: dict[str, Any] | None) -> str:
    """UA, IRA, CRA and the surrogate rate before and after, as a table (toy model only)."""
    if not scores:
        return ""
    rows = ["| concept | | UA | IRA | CRA | surrogate rate |", "|---|---|---|---|---|---|"]
    for before, after in zip(scores["before"], scores["after"], strict=True):
        for side, s in (("before", before), ("after", after)):
            rows.append(
                f"| {s['concept']} | {side} | {s['ua']:.3f} | {s['ira']:.3f} | {s['cra']:.3f} "
                f"| {s['surrogate_rate']:.3f} |"
            )
    note = f"\n\nOn the toy classifiers, {scores['generations']} generations per side (the gallery's seeds)."
    return "\n".join(rows) + note


def losses_frame(losses: list[float]):
    import pandas as pd

    return pd.DataFrame({"step": list(range(1, len(losses) + 1)), "loss": losses})


def gallery_items(images, prompts: list[str], seeds: list[int]) -> list[tuple[Any, str]]:
    """Gallery entries, prompt-major, each captioned with its prompt and seed."""
    captions = [f"{prompt} | seed {seed}" for prompt in prompts for seed in seeds]
    return list(zip(images, captions, strict=True))


def view_updates(gr, view: View, seen: dict[str, int] | None) -> tuple[list[Any], dict[str, int]]:
    """What a tab must change to show ``view``, given the versions it has shown (``gr.skip()`` elsewhere)."""
    seen = seen or {}

    def changed(*parts: str) -> bool:
        return any(view.versions[p] != seen.get(p) for p in parts)

    running = view.status == "running"
    shown = view.shown
    out: list[Any] = []
    out.append(progress_html(view) if changed("progress", "status") else gr.skip())
    out.append(view.message if changed("status") else gr.skip())
    out.append(losses_frame(view.losses) if changed("losses") else gr.skip())
    out.append(view.profile_plot if changed("profile") else gr.skip())
    out.append(view.saliency_plot if changed("saliency") else gr.skip())
    if changed("shown") and shown is not None:
        out.append(gr.update(value=gallery_items(shown.before, shown.prompts, shown.seeds), columns=len(shown.seeds)))
        out.append(gr.update(value=shown.strength))
        out.append(scores_markdown(shown.scores))
        out.append(
            gr.update(value=str(shown.lora_path) if shown.lora_path else None, interactive=bool(shown.lora_path))
        )
        out.append(
            f"**{html.escape(shown.title)}**" + (f" &middot; written to `{view.run_folder}`" if view.run_folder else "")
        )
    else:
        out += [gr.skip()] * 5
    if changed("after", "shown") and shown is not None:
        out.append(gr.update(value=gallery_items(shown.after, shown.prompts, shown.seeds), columns=len(shown.seeds)))
    else:
        out.append(gr.skip())
    if changed("status"):
        out += [gr.update(interactive=not running), gr.update(interactive=running)]
    else:
        out += [gr.skip(), gr.skip()]
    return out, dict(view.versions)


def _guarded(action: Callable[..., str]) -> Callable[..., str]:
    """An action whose user errors come back as the one-line message the command line would print."""

    def call(*args):
        try:
            return action(*args)
        except USER_ERRORS as exc:
            return f"error: {describe_error(exc)}"

    return call


def build_ui(app: SpareApp):
    """The gradio Blocks of the app (not launched)."""
    gr = _gradio()
    # The toy world's example erasure; on a real model the user names the concept.
    concepts_default, surrogates_default = ("red", "plain") if app.default_model[0] == TOY_MODEL else ("", "")
    retain_default = "\n".join(app.default_retain_prompts(concepts_default))
    previews_default = "\n".join(app.default_preview_prompts(concepts_default))
    by_name = {s.name: s for s in SETTINGS}
    panel = [s for s in SETTINGS if s.name not in FRONT_SETTINGS]

    with gr.Blocks(title="SPARE: erase a concept", analytics_enabled=False) as blocks:
        gr.Markdown(
            "# SPARE: erase a concept\n"
            "Name a concept and what to draw instead, train, and compare the model before and after on fixed "
            "seeds. The toy model trains in about a minute on a CPU."
        )
        with gr.Row():
            model = gr.Textbox(
                value=app.default_model[0],
                label="model",
                info=f"'{TOY_MODEL}' (the toy model), an SD 1.x/2.x/SDXL .safetensors file, or a diffusers folder",
                elem_id="spare-model",
            )
            device = gr.Textbox(value=app.default_model[1], label="device", info="cpu, cuda, cuda:N or mps")
            dtype = gr.Dropdown(["fp32", "fp16", "bf16"], value=app.default_model[2], label="dtype")
        with gr.Row():
            concepts = gr.Textbox(
                value=concepts_default,
                label="concepts",
                info="what to erase; several separated by commas",
                elem_id="spare-concepts",
            )
            surrogates = gr.Textbox(
                value=surrogates_default,
                label="surrogates",
                info="what to draw instead: one for all, or one per concept",
                elem_id="spare-surrogates",
            )
            widgets = {"steps": setting_widget(gr, by_name["steps"])}
        with gr.Row():
            widgets["retain_prompts"] = setting_widget(gr, by_name["retain_prompts"], retain_default.splitlines())
            forget_images = gr.File(
                label="your own forget images (optional)",
                file_count="multiple",
                file_types=["image"],
                elem_id="spare-forget-images",
            )
        with gr.Accordion("Erasure settings", open=False, elem_id="spare-settings"):
            for setting in panel:
                if not setting.advanced:
                    widgets[setting.name] = setting_widget(gr, setting)
        with gr.Accordion("Advanced settings", open=False, elem_id="spare-advanced"):
            for setting in panel:
                if setting.advanced:
                    widgets[setting.name] = setting_widget(gr, setting)
        with gr.Row():
            seeds = gr.Textbox(
                value=", ".join(map(str, forms.DEFAULT_SEEDS)),
                label="gallery seeds",
                info="the same seeds before and after",
                elem_id="spare-seeds",
            )
            file_name = gr.Textbox(
                value=forms.default_file_name([concepts_default]),
                label="LoRA file name",
                info="written inside the output folder",
                elem_id="spare-file-name",
            )
        gallery_prompts = gr.Textbox(
            value=previews_default, lines=3, max_lines=12, label="gallery prompts", elem_id="spare-gallery-prompts"
        )
        with gr.Row():
            train_button = gr.Button("Train", variant="primary", elem_id="spare-train")
            cancel_button = gr.Button("Cancel", variant="stop", interactive=False, elem_id="spare-cancel")
        message = gr.Markdown(elem_id="spare-message")
        progress = gr.HTML(elem_id="spare-progress")
        with gr.Row():
            profile_plot = gr.Image(label="timestep profile", type="pil", format="png", elem_id="spare-profile")
            saliency_plot = gr.Image(label="saliency", type="pil", format="png", elem_id="spare-saliency")
            loss_plot = gr.LinePlot(x="step", y="loss", label="training loss", elem_id="spare-loss")
        shown_title = gr.Markdown(elem_id="spare-shown")
        strength = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="LoRA strength", elem_id="spare-strength")
        with gr.Row():
            before = gr.Gallery(label="before", columns=4, format="png", elem_id="spare-before")
            after = gr.Gallery(label="after", columns=4, format="png", elem_id="spare-after")
        scores = gr.Markdown(elem_id="spare-scores")
        with gr.Row():
            download = gr.DownloadButton("Download LoRA", interactive=False, elem_id="spare-download")
            lora_file = gr.File(label="preview a LoRA file", file_types=[".safetensors"], elem_id="spare-lora-file")
            load_button = gr.Button("Preview this LoRA", elem_id="spare-load")

        seen = gr.State(None)
        setting_names = list(widgets)
        setting_widgets = [widgets[name] for name in setting_names]

        def start(model_v, device_v, dtype_v, concepts_v, surrogates_v, seeds_v, prompts_v, name_v, files, *values):
            form = ErasureForm(
                concepts=concepts_v,
                surrogates=surrogates_v,
                settings=dict(zip(setting_names, values, strict=True)),
                seeds=seeds_v,
                preview_prompts=prompts_v,
                file_name=name_v,
                forget_images=[getattr(f, "name", f) for f in files or []],
                model=(model_v or TOY_MODEL).strip(),
                device=(device_v or "cpu").strip(),
                dtype=dtype_v,
            )
            return app.start(form)

        train_button.click(
            _guarded(start),
            [model, device, dtype, concepts, surrogates, seeds, gallery_prompts, file_name, forget_images]
            + setting_widgets,
            [message],
            concurrency_limit=1,
            concurrency_id="model",
        )
        cancel_button.click(lambda: app.cancel(), None, [message], concurrency_limit=None)

        def set_strength(value):
            app.set_strength(value)
            return f"strength {float(value):g}"

        strength.release(_guarded(set_strength), [strength], [message], concurrency_id="model")

        def load(path, seeds_v, prompts_v, strength_v):
            if not path:
                raise ValueError("no LoRA file chosen: pick a .safetensors file first")
            app.load_lora(getattr(path, "name", path), seeds_v, prompts_v, strength_v)
            return f"showing {Path(getattr(path, 'name', path)).name}"

        load_button.click(
            _guarded(load), [lora_file, seeds, gallery_prompts, strength], [message], concurrency_id="model"
        )

        def refill(concepts_v, model_v, retain_v, prompts_v, name_v, defaults):
            """New concepts: refill the boxes the user has not edited with the new concepts' defaults."""
            defaults = defaults or {"retain": retain_default, "prompts": previews_default, "name": file_name.value}
            try:
                fresh = {
                    "retain": "\n".join(app.default_retain_prompts(concepts_v, model_v)),
                    "prompts": "\n".join(app.default_preview_prompts(concepts_v, model_v)),
                    "name": forms.default_file_name(forms.names(concepts_v)),
                }
            except USER_ERRORS:  # e.g. a word the toy world does not know: leave the boxes as they are
                return gr.skip(), gr.skip(), gr.skip(), defaults
            keep = {"retain": retain_v, "prompts": prompts_v, "name": name_v}
            new = [fresh[k] if keep[k] == defaults[k] else gr.skip() for k in ("retain", "prompts", "name")]
            return (*new, fresh)

        refill_defaults = gr.State(None)
        concepts.change(
            refill,
            [concepts, model, widgets["retain_prompts"], gallery_prompts, file_name, refill_defaults],
            [widgets["retain_prompts"], gallery_prompts, file_name, refill_defaults],
            concurrency_limit=None,
        )

        outputs = [
            progress,
            message,
            loss_plot,
            profile_plot,
            saliency_plot,
            before,
            strength,
            scores,
            download,
            shown_title,
            after,
            train_button,
            cancel_button,
            seen,
        ]

        def poll(seen_v):
            updates, versions = view_updates(gr, app.view(), seen_v)
            return (*updates, versions)

        timer = gr.Timer(POLL_SECONDS)
        timer.tick(poll, [seen], outputs, concurrency_limit=None, show_progress="hidden")
        blocks.load(poll, [gr.State(None)], outputs, concurrency_limit=None, show_progress="hidden")
    return blocks


def theme(gr):
    """The default theme with the system's fonts: the page loads nothing from other hosts."""
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    mono = ["ui-monospace", "monospace"]
    return gr.themes.Default(font=system, font_mono=mono)


def launch(
    out_dir: str | Path = "outputs/app",
    host: str = "127.0.0.1",
    port: int | None = None,
    model: str = TOY_MODEL,
    device: str = "cpu",
    dtype: str = "fp32",
    share: bool = False,
    block: bool = True,
):
    """Start the app on ``host:port`` (a free port from 7860 on when None); returns the Blocks when not blocking."""
    gr = _gradio()
    app = SpareApp(out_dir, model, device, dtype)
    app.out_dir.mkdir(parents=True, exist_ok=True)
    app.backend()  # open the model now: a bad --model fails here, with one line
    blocks = build_ui(app)
    blocks.queue(default_concurrency_limit=1)
    blocks.launch(
        server_name=host,
        server_port=port,
        share=share,
        inbrowser=False,
        allowed_paths=[str(app.out_dir)],
        prevent_thread_lock=not block,
        ssr_mode=False,
        theme=theme(gr),
        css=CSS,
        quiet=False,
    )
    return blocks
