"""The app's page: widgets generated from the settings schema, and what a tab is sent when it polls."""

from __future__ import annotations

import pytest
from PIL import Image

from spare_app.session import Progress, Shown, SpareApp, View
from spare_app.ui import build_ui, progress_html, scores_markdown, view_updates
from spare_core import SETTINGS
from spare_core.cli import main as cli_main

gr = pytest.importorskip("gradio")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    app = SpareApp(tmp_path_factory.mktemp("ui"))
    return app, build_ui(app)


def _by_elem_id(blocks) -> dict:
    return {b.elem_id: b for b in blocks.blocks.values() if getattr(b, "elem_id", None)}


def _inside(block, container) -> bool:
    parent = block.parent
    while parent is not None:
        if parent is container:
            return True
        parent = parent.parent
    return False


def test_every_setting_has_a_widget_with_the_schemas_default_range_and_help(page):
    app, blocks = page
    widgets = _by_elem_id(blocks)
    advanced_panel, settings_panel = widgets["spare-advanced"], widgets["spare-settings"]
    for setting in SETTINGS:
        widget = widgets[f"setting-{setting.name}"]
        assert widget.label == setting.name
        assert setting.help in widget.info and setting.range_text() in widget.info
        if setting.name == "retain_prompts":  # prefilled with the toy world's retain prompts for `red`
            assert widget.value == "\n".join(app.default_retain_prompts("red"))
        elif setting.kind == "list":
            assert widget.value == "\n".join(setting.default)
        else:
            assert widget.value == setting.default, setting.name
        if setting.kind in ("int", "float"):
            assert (widget.minimum, widget.maximum) == (setting.minimum, setting.maximum)
            assert widget.precision == (0 if setting.kind == "int" else None)
        if setting.kind == "choice":
            assert [c[1] if isinstance(c, tuple) else c for c in widget.choices] == list(setting.choices)
        # Concept, surrogate, steps (and the retain prompts) in front; advanced settings folded away.
        if setting.name in ("steps", "retain_prompts"):
            assert not _inside(widget, advanced_panel) and not _inside(widget, settings_panel)
        else:
            assert _inside(widget, advanced_panel) == setting.advanced, setting.name
            assert _inside(widget, settings_panel) == (not setting.advanced), setting.name
    assert advanced_panel.open is False and settings_panel.open is False


def test_the_page_opens_on_the_toy_model_with_toy_defaults(page):
    app, blocks = page
    widgets = _by_elem_id(blocks)
    assert widgets["spare-model"].value == "toy"
    assert (widgets["spare-concepts"].value, widgets["spare-surrogates"].value) == ("red", "plain")
    assert widgets["spare-seeds"].value == "11, 12, 13, 14"
    assert widgets["spare-gallery-prompts"].value.splitlines() == app.default_preview_prompts("red")
    assert widgets["spare-file-name"].value == "spare_red.safetensors"
    assert widgets["spare-cancel"].interactive is False


def _view(**changes) -> View:
    fields = dict(
        status="idle",
        message="",
        progress=Progress(),
        losses=[],
        profile_plot=None,
        saliency_plot=None,
        shown=None,
        run_folder=None,
        versions={n: 0 for n in ("status", "progress", "losses", "profile", "saliency", "shown", "after")},
    )
    return View(**{**fields, **changes})


def test_a_tab_is_sent_only_what_changed():
    skip = gr.skip()
    first, seen = view_updates(gr, _view(), None)
    assert isinstance(first[0], str) and first[1] == "" and len(first[2]) == 0  # progress, message, losses
    again, _ = view_updates(gr, _view(), seen)
    assert all(isinstance(u, dict) and u == skip for u in again)
    picture = Image.new("RGB", (4, 4))
    shown = Shown("erased red -> plain", ["p"], [1, 2], 1.0, [picture, picture], [picture, picture])
    versions = {**seen, "losses": 1, "shown": 1}
    updates, _ = view_updates(gr, _view(losses=[0.5, 0.25], shown=shown, versions=versions), seen)
    losses, before, after = updates[2], updates[5], updates[10]
    assert list(losses["loss"]) == [0.5, 0.25] and list(losses["step"]) == [1, 2]
    assert [caption for _, caption in before["value"]] == ["p | seed 1", "p | seed 2"] and len(after["value"]) == 2
    assert before["columns"] == after["columns"] == 2  # one column per seed
    assert updates[0] == skip and updates[3] == skip


def test_progress_names_the_stage_of_this_runs_stages():
    running = _view(status="running", progress=Progress("train", 30, 120, "", ("data", "saliency", "train")))
    text = progress_html(running)
    assert "Stage 3 of 3: training the sparse LoRA &middot; 30 / 120" in text and 'value="0.2500"' in text
    assert 'data-status="done"' in progress_html(_view(status="done"))


def test_scores_table_lists_before_and_after():
    row = dict(concept="red", ua=0.0, ira=1.0, cra=0.98, surrogate_rate=0.0)
    table = scores_markdown({"generations": 144, "before": [row], "after": [{**row, "ua": 1.0}]})
    assert "| red | before | 0.000 | 1.000 | 0.980 | 0.000 |" in table
    assert "| red | after | 1.000 |" in table and "144 generations" in table
    assert scores_markdown(None) == ""


def test_spare_app_rejects_a_bad_port_and_a_bad_model_in_one_line(capsys):
    assert cli_main(["app", "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "spare app: error: --port must be 1 to 65535, got 70000"
    assert cli_main(["app", "--model", "/no/such/model", "--port", "7999"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spare app: error: ") and "/no/such/model" in err and err.count("\n") == 0
