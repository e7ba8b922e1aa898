"""The evaluation harness (`spare eval`): counts, intervals, retain fidelity and the per-prompt matrix."""

from __future__ import annotations

import json

import pytest
import torch

from spare_core import BaseGrids, ConceptPair, WeightDelta, evaluate_edit, proportion, report_markdown
from spare_core.toy.erasure_eval import GRID_STYLES, erasure_counts
from spare_core.toy.evaluate import GridResult
from spare_core.toy.harness import metric_table, pooled_counts, prompt_matrix, retain_fidelity
from spare_core.toy.world import OBJECTS, STYLES


def _grid(objects, styles, object_pred, style_pred, images=None) -> GridResult:
    n = len(objects)
    return GridResult(
        images if images is not None else torch.zeros(n, 3, 4, 4),
        torch.tensor([OBJECTS.index(o) for o in objects]),
        torch.tensor([STYLES.index(s) for s in styles]),
        torch.tensor([OBJECTS.index(o) for o in object_pred]),
        torch.tensor([STYLES.index(s) for s in style_pred]),
    )


def test_counts_follow_the_unlearncanvas_definitions_on_a_known_confusion():
    # Four red prompts (two drawn plain, one blue, one still red) and four others.
    grid = _grid(
        objects=["circle", "square", "star", "ring", "circle", "square", "star", "ring"],
        styles=["red", "red", "red", "red", "blue", "blue", "dots", "dots"],
        object_pred=["circle", "square", "circle", "ring", "circle", "square", "star", "cross"],
        style_pred=["plain", "plain", "blue", "red", "blue", "dots", "dots", "dots"],
    )
    (counts,) = erasure_counts(grid, [ConceptPair("red", "plain")])
    assert counts["ua"] == (3, 4)  # not drawn red
    assert counts["surrogate_rate"] == (2, 4)  # drawn plain
    assert counts["other_attribute"] == (3, 4)  # the star drawn as a circle
    assert counts["ira"] == (3, 4)  # the other styles: blue square drawn dots
    assert counts["cra"] == (3, 4)  # objects of prompts without red: ring drawn as cross
    table = metric_table([counts, counts])
    assert table["ua"] == proportion(6, 8)


def test_pooling_adds_counts_not_rates():
    pooled = pooled_counts([{"ua": (1, 1)}, {"ua": (0, 9)}])
    assert pooled["ua"] == (1, 10)  # the mean of rates would be 0.5


def test_retain_fidelity_measures_the_change_of_retained_images_only():
    before = torch.zeros(4, 3, 32, 32)
    after = before.clone()
    after[:2] += 0.2  # retained images change by 0.1 in [0, 1] units
    after[2:] = 1.0  # the erased ones change a lot but are not retained
    base = _grid(["circle"] * 4, ["blue"] * 4, ["circle"] * 4, ["blue"] * 4, before)
    edited = _grid(["circle"] * 4, ["blue"] * 4, ["circle"] * 4, ["blue"] * 4, after)

    class Features(torch.nn.Module):
        def embed(self, images):
            return images.mean(dim=(2, 3)) + 1.0

    fidelity = retain_fidelity(base, edited, torch.tensor([True, True, False, False]), [Features()])
    assert fidelity["pixel_distance"]["value"] == pytest.approx(0.1, abs=1e-6)
    assert fidelity["pixel_distance"]["n"] == 2
    assert fidelity["feature_distance"]["value"] == pytest.approx(0.2, abs=1e-6)  # |0.2 * 1| / |1| per channel


def test_the_prompt_matrix_counts_images_that_show_both_object_and_style():
    grid = _grid(["circle", "circle", "star"], ["red", "red", "blue"], ["circle", "square", "star"], ["red"] * 3)
    matrix = prompt_matrix(grid)
    assert matrix["circle"]["red"] == (1, 2)
    assert matrix["star"]["blue"] == (0, 1)
    assert matrix["ring"]["dots"] == (0, 0)
    assert set(matrix["circle"]) == set(GRID_STYLES)


def test_an_edit_that_changes_nothing_scores_exactly_as_the_base_model(toy_backend, toy_classifiers):
    unchanged = WeightDelta(toy_backend.denoiser(), ["conv_in"])
    base = BaseGrids(steps=4)
    report = evaluate_edit(
        toy_backend, [ConceptPair("circle", "square")], unchanged, classifiers=toy_classifiers,
        seeds=[0], templates=["evaluation"], base=base,
    ).as_dict()  # fmt: skip
    entry = report["templates"]["evaluation"]
    for metric in ("ua", "ira", "cra", "surrogate_rate", "other_attribute"):
        assert entry["pooled"][metric] == entry["pooled"]["base"][metric]
    assert entry["pooled"]["ua"]["n"] == len(GRID_STYLES)  # the circle in every style, one seed
    assert entry["pooled"]["ira"]["n"] == (len(OBJECTS) - 1) * len(GRID_STYLES)
    assert entry["retain_fidelity"]["pixel_distance"]["value"] == 0.0
    assert entry["prompt_matrix"] == entry["base_prompt_matrix"]
    assert "| UA |" in report_markdown(report)
    assert "robustness" not in report  # only with attacks
    with pytest.raises(ValueError, match="held_out"):
        evaluate_edit(toy_backend, [ConceptPair("circle", "square")], unchanged, templates=["training"], base=base)


def test_spare_eval_writes_json_markdown_and_matrix_plots(toy_backend, tmp_path, capsys):
    from spare_core import run_baseline
    from spare_core.cli import main

    config_pairs = [ConceptPair("blue", "plain")]
    from spare_core import ErasureConfig

    result = run_baseline(toy_backend, "uce", ErasureConfig(config_pairs))
    path = result.save(tmp_path / "uce_blue.delta.safetensors", toy_backend)
    out = tmp_path / "eval"
    code = main([
        "eval", str(path), "--seeds", "1", "--templates", "evaluation", "--steps", "4", "--out", str(out),
        "--attacks", "neighbours",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "uce_blue.json").read_text())
    assert report["concepts"] == [{"concept": "blue", "surrogate": "plain"}]  # read from the file's metadata
    ua = report["templates"]["evaluation"]["per_concept"]["blue"]["ua"]
    assert ua["n"] == len(OBJECTS) and ua["ci_low"] <= ua["value"] <= ua["ci_high"]
    assert (out / "uce_blue").with_suffix(".md").read_text().startswith("# uce_blue.delta.safetensors")
    assert (out / "uce_blue_matrix_evaluation.png").stat().st_size > 1000
    neighbours = report["robustness"]["blue"]["neighbours"]["evaluation"]
    assert len(neighbours["neighbours"]) == 2 and "blue" not in neighbours["neighbours"]
    assert neighbours["after"]["n"] == 2 * len(OBJECTS)  # each neighbour style on every object, one seed
    assert "nearest neighbours" in (out / "uce_blue").with_suffix(".md").read_text()
    assert main(["eval", str(tmp_path / "missing.safetensors"), "--out", str(out)]) == 2
