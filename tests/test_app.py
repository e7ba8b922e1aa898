"""The app's actions on the toy model: the right images, plots, numbers and files, and clear errors."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from tiny import TINY_SETTINGS, tiny_config

from spare_app import forms
from spare_app.session import BUSY, ErasureForm, SpareApp
from spare_core import ConceptPair, ErasureConfig, build_lora, erase, open_model, preview, read_lora
from spare_core.cli import main as cli_main
from spare_core.toy.erasure_eval import before_after_scores
from spare_core.toy.pipeline import load_toy_classifiers

gr = pytest.importorskip("gradio")

PROMPTS = ["a circle image in yellow style", "a ring image in blue style"]
SEEDS = [11, 12]


def _form(**changes) -> ErasureForm:
    fields = dict(
        concepts="yellow",
        surrogates="plain",
        settings=dict(TINY_SETTINGS),
        seeds=", ".join(map(str, SEEDS)),
        preview_prompts="\n".join(PROMPTS),
        file_name="erased.safetensors",
    )
    return ErasureForm(**{**fields, **changes})


def _pixels(images: list[Image.Image]) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


def _same(a: list[Image.Image], b: list[Image.Image]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(_pixels(a), _pixels(b), strict=True))


def _files(folder) -> list:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny erasure of ``yellow`` run through the app, and the same erasure run by the engine."""
    out = tmp_path_factory.mktemp("app")
    app = SpareApp(out)
    app.start(_form())
    view = app.wait(300)
    backend = open_model("toy")
    reference = erase(backend, tiny_config("yellow", "plain"))
    return app, view, backend, reference


@pytest.mark.slow
def test_an_erasure_shows_plots_losses_galleries_and_scores(finished):
    app, view, backend, reference = finished
    assert view.status == "done", view.message
    assert view.message.startswith("erased yellow -> plain")
    assert isinstance(view.profile_plot, Image.Image) and isinstance(view.saliency_plot, Image.Image)
    assert view.losses == pytest.approx(reference.history.losses)
    shown = view.shown
    assert shown.prompts == PROMPTS and shown.seeds == SEEDS and shown.strength == 1.0
    engine_preview = preview(backend, PROMPTS, SEEDS, reference.adapter, 1.0)
    assert _same(shown.before, [im.resize((128, 128), Image.NEAREST) for im in engine_preview.images("before")])
    assert _same(shown.after, [im.resize((128, 128), Image.NEAREST) for im in engine_preview.images("after")])
    before, after, generations = before_after_scores(
        backend, load_toy_classifiers(), reference.config.concepts, SEEDS, reference.adapter
    )
    assert shown.scores["generations"] == generations
    assert shown.scores["before"] == [s.as_dict() for s in before]
    assert shown.scores["after"] == [s.as_dict() for s in after]


@pytest.mark.slow
def test_the_app_writes_the_same_lora_file_as_the_engine(finished):
    app, view, backend, reference = finished
    assert shown_path(view).parent == view.run_folder and view.run_folder.parent == app.out_dir
    assert shown_path(view).read_bytes() == build_lora(reference, backend).to_bytes()
    written = {p.name for p in view.run_folder.iterdir()}
    assert written == {
        "erased.safetensors",
        "before_after.png",
        "profile.png",
        "saliency.png",
        "losses.png",
        "report.json",
    }


def shown_path(view):
    return view.shown.lora_path


@pytest.mark.slow
def test_the_strength_slider_rerenders_after_only(finished):
    app, view, backend, reference = finished
    at_zero = app.set_strength(0.0)
    assert _same(at_zero.after, at_zero.before)
    assert not _same(view.shown.after, view.shown.before), "the tiny erasure should change some pixels"
    at_one = app.set_strength(1.0)
    assert _same(at_one.after, view.shown.after)
    half = app.set_strength(0.5)
    assert not _same(half.after, at_one.after) and not _same(half.after, half.before)
    assert app.view().versions["after"] > view.versions["after"]
    with pytest.raises(ValueError, match="strength must be 0 to 2"):
        app.set_strength(3)


@pytest.mark.slow
def test_a_lora_file_loads_for_preview_at_any_strength(finished, tmp_path):
    _, view, _, _ = finished
    app = SpareApp(tmp_path)
    shown = app.load_lora(view.shown.lora_path, "11, 12", "\n".join(PROMPTS), strength=0.0)
    assert shown.title == "loaded erased.safetensors"
    assert _same(shown.after, shown.before) and _same(shown.before, view.shown.before)
    assert not _same(app.set_strength(1.0).after, shown.before)
    # The prompts default to the stored concepts' gallery prompts.
    assert app.load_lora(view.shown.lora_path, "11", "").prompts == app.default_preview_prompts("yellow")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(concepts=" "), "no concept given: name what to erase"),
        (dict(surrogates=""), "no surrogate given"),
        (dict(concepts="red, blue", surrogates="plain, dots, stripes"), "2 concepts but 3 surrogates"),
        (dict(seeds="11, x"), "seed 'x' is not a whole number"),
        (dict(seeds="11, 11"), "a seed is given twice"),
        (dict(file_name="../../x"), "file name '../../x' is not allowed"),
        (dict(file_name="/tmp/x.safetensors"), "is not allowed"),
        (dict(file_name=".hidden"), "is not allowed"),
        (dict(settings={**TINY_SETTINGS, "top_k": -1}), "top_k must be 0 to 10000, got -1"),
        (dict(settings={**TINY_SETTINGS, "steps": None}), "steps is empty"),
        (dict(concepts="dog"), "'dog' is not a toy concept"),
    ],
)
def test_bad_input_gets_one_clear_line_and_starts_nothing(tmp_path, changes, message):
    app = SpareApp(tmp_path / "out")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as caught:
        app.start(_form(**changes))
    assert "\n" not in str(caught.value)
    assert not app.running and app.view().status == "idle"
    assert _files(tmp_path) == []


def test_a_bad_setting_reads_as_the_command_line_says_it(tmp_path, capsys):
    cli_main(["erase", "--concept", "yellow", "--surrogate", "plain", "--lr", "0", "--dry-run"])
    cli_line = capsys.readouterr().err.strip()
    from spare_app.ui import _guarded

    start = _guarded(lambda: SpareApp(tmp_path).start(_form(settings={**TINY_SETTINGS, "lr": 0})))
    assert cli_line == f"spare erase: {start()}"


@pytest.mark.slow
def test_cancel_stops_within_a_step_and_leaves_no_file(tmp_path):
    app = SpareApp(tmp_path)
    app.start(_form(settings={**TINY_SETTINGS, "steps": 2000}))
    deadline = time.monotonic() + 120
    while app.view().progress.stage != "train" or app.view().progress.step < 2:
        assert time.monotonic() < deadline and app.running, app.view().message
        time.sleep(0.05)
    with pytest.raises(ValueError, match=BUSY):
        app.start(_form())
    with pytest.raises(ValueError, match="nothing to compare yet"):
        app.set_strength(0.5)
    assert app.cancel() == "cancelling"
    cancelled_at = time.monotonic()
    view = app.wait(60)
    assert time.monotonic() - cancelled_at < 5
    assert view.status == "cancelled" and view.message == "cancelled; nothing was written"
    assert view.progress.step < 2000 and view.shown is None
    assert _files(tmp_path) == []
    assert app.cancel() == "nothing is running"


@pytest.mark.slow
def test_uploaded_forget_images_replace_the_drawn_ones(tmp_path):
    pictures = []
    for i, colour in enumerate(["#ff0", "#ee2", "#dd0"]):
        path = tmp_path / f"upload{i}.png"
        Image.new("RGB", (48, 40), colour).save(path)
        pictures.append(str(path))
    app = SpareApp(tmp_path / "out")
    app.start(_form(forget_images=pictures))
    view = app.wait(300)
    assert view.status == "done", view.message
    import json

    report = json.loads((view.run_folder / "report.json").read_text())
    assert report["own_forget_images"] == 3
    broken = tmp_path / "notes.png"
    broken.write_text("not a picture")
    with pytest.raises(ValueError, match="cannot read image notes.png"):
        app.start(_form(forget_images=[str(broken)]))


def test_file_names_stay_inside_the_output_folder(tmp_path):
    for bad in ["../x", "a/b", "a\\b", "..", ".x", "", "x y", "~/x"]:
        with pytest.raises(ValueError):
            forms.safe_file_name(bad)
    assert forms.safe_file_name("my-lora_1") == "my-lora_1.safetensors"
    assert forms.safe_file_name("a.safetensors") == "a.safetensors"
    assert forms.default_file_name(["van gogh", "red"]) == "spare_van-gogh_red.safetensors"
    assert forms.inside(tmp_path, tmp_path / forms.safe_file_name("ok"))
    assert not forms.inside(tmp_path, tmp_path / "../x")


def test_retain_prompts_left_at_their_default_are_stored_as_the_default(tmp_path):
    app = SpareApp(tmp_path)
    defaults = app.default_retain_prompts("yellow")
    assert defaults and all("yellow" not in p for p in defaults)
    same = forms.build_config("yellow", "plain", "toy", {"retain_prompts": "\n".join(defaults)}, defaults)
    assert same == ErasureConfig(concepts=[ConceptPair("yellow", "plain")])
    edited = forms.build_config("yellow", "plain", "toy", {"retain_prompts": "\n".join(defaults[:2])}, defaults)
    assert edited.retain_prompts == defaults[:2]


def test_gallery_prompts_name_the_concept_then_keep_others(tmp_path):
    app = SpareApp(tmp_path)
    prompts = app.default_preview_prompts("yellow")
    assert len(prompts) == 6
    assert all("yellow" in p for p in prompts[:3]) and all("yellow" not in p for p in prompts[3:])
    both = app.default_preview_prompts("yellow, circle")
    assert len(both) == 9 and not any("yellow" in p or "circle" in p for p in both[6:])
    assert app.default_preview_prompts("a dog", model="/some/folder")[:2] == ["a dog", "an image of a dog"]


def test_importing_the_engine_and_the_app_package_does_not_import_gradio():
    code = "import sys, spare_core, spare_core.cli, spare_app; assert 'gradio' not in sys.modules, 'gradio imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_the_app_erases_on_a_checkpoint_file_with_generic_prompts(tmp_path, monkeypatch, no_network):
    """A Stable Diffusion .safetensors file in the model box: generic defaults, no toy scores, a LoRA for it."""
    from test_single_file import build_modules, reduced_configs, write_checkpoint

    from spare_core import single_file

    monkeypatch.setattr(single_file, "component_configs", reduced_configs)  # reduced widths, same layout
    checkpoint = tmp_path / "model.safetensors"
    write_checkpoint(checkpoint, build_modules("sd1"))
    app = SpareApp(tmp_path / "out", model=str(checkpoint))
    prompts = app.default_preview_prompts("a cat")
    assert prompts[:2] == ["a cat", "an image of a cat"] and len(prompts) == 5
    app.start(_form(concepts="a cat", surrogates="a dog", preview_prompts="", model=str(checkpoint)))
    assert app.view().progress.stages == ("data", "profile", "saliency", "train", "preview")
    view = app.wait(300)
    assert view.status == "done", view.message
    assert view.shown.scores is None and view.shown.prompts == prompts
    assert len(view.shown.after) == len(prompts) * len(SEEDS)
    lora = read_lora(view.shown.lora_path)
    assert lora.metadata["ss_base_model_version"] == "sd_v1" and lora.config().base_model == str(checkpoint)
