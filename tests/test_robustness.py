"""Robustness checks of the harness: rephrasings, nearest neighbours, and the attacks wired into `evaluate_edit`."""

from __future__ import annotations

import pytest
import torch

from spare_core import BaseGrids, ConceptPair, WeightDelta, evaluate_edit
from spare_core.backend import Conditioning
from spare_core.toy import robustness
from spare_core.toy.evaluate import GridResult
from spare_core.toy.world import EVAL_TEMPLATE, FULL_TEMPLATES, OBJECTS, STYLES, names_of


def test_rephrasings_cover_every_name_in_unseen_templates_but_not_plain_ua():
    variants = robustness.rephrasings("checker")
    assert len(variants) == len(names_of("checker")) * len(robustness.REPHRASING_TEMPLATES) - 1
    assert ("checker", EVAL_TEMPLATE) not in variants  # that is the plain UA
    assert ("checkered", EVAL_TEMPLATE) in variants
    prompts = {t.format(object="circle", style=name) for name, t in variants}
    assert "checker circle" in prompts  # the example: no word "style"
    assert not set(robustness.UNSEEN_TEMPLATES) & set(FULL_TEMPLATES)


def test_the_rephrasing_ua_pools_only_variants_the_base_model_draws(monkeypatch):
    # Base: the variant with the synonym "hoop" in an unseen order is drawn only half the time -> not counted.
    def fake_draw(backend, classifiers, concept, name, template, seeds, edit, steps, guidance):
        if edit is None:
            return torch.tensor([True, name != "hoop" or template != "{style} {object}"] * 3)
        return torch.tensor([False, False, False, True, False, True])  # 2 of 6 still drawn after the edit

    monkeypatch.setattr(robustness, "_draw", fake_draw)
    cache: dict = {}
    result = robustness.rephrasing_attack(None, None, "ring", object(), base_cache=cache)
    variants = robustness.rephrasings("ring")
    counted = [v for v in result["variants"] if v["counted"]]
    assert len(result["variants"]) == len(variants) and len(counted) == len(variants) - 1
    skipped = next(v for v in result["variants"] if not v["counted"])
    assert (skipped["name"], skipped["template"], skipped["base_rate"]) == ("hoop", "{style} {object}", 0.5)
    assert result["ua"]["k"] == 4 * len(counted) and result["ua"]["n"] == 6 * len(counted)
    assert len(cache) == len(variants)  # the base side is kept for the next edit
    none_counted = robustness.rephrasing_attack(None, None, "ring", object(), min_base_rate=1.01)
    assert none_counted["ua"] is None


def _grid(objects, styles, object_pred, style_pred) -> GridResult:
    return GridResult(
        torch.zeros(len(objects), 3, 4, 4),
        torch.tensor([OBJECTS.index(o) for o in objects]),
        torch.tensor([STYLES.index(s) for s in styles]),
        torch.tensor([OBJECTS.index(o) for o in object_pred]),
        torch.tensor([STYLES.index(s) for s in style_pred]),
    )


def test_neighbour_accuracy_reads_the_neighbours_prompts_only():
    base = _grid(["circle"] * 4, ["blue", "blue", "yellow", "red"], ["circle"] * 4, ["blue", "blue", "yellow", "red"])
    after = _grid(
        ["circle"] * 4, ["blue", "blue", "yellow", "red"], ["circle"] * 4, ["blue", "plain", "plain", "plain"]
    )
    result = robustness.neighbour_accuracy(base, after, ["blue", "yellow"])
    assert (result["base"]["k"], result["base"]["n"]) == (3, 3)  # the red prompt is not a neighbour's
    assert (result["after"]["k"], result["after"]["n"]) == (1, 3)
    objects = robustness.neighbour_accuracy(base, base, ["circle"])
    assert (objects["after"]["k"], objects["after"]["n"]) == (4, 4)


class _EmbeddingBackend:
    """Encodes a prompt as a fixed vector per style word: blue lies closest to red, then yellow."""

    VECTORS = {"red": [1.0, 0.0], "blue": [0.9, 0.1], "yellow": [0.6, 0.8], "stripes": [0.0, 1.0],
               "checker": [-0.1, 1.0], "dots": [-1.0, 0.0]}  # fmt: skip

    def encode_prompts(self, prompts):
        rows = [next(v for w, v in self.VECTORS.items() if f" {w} " in f" {p} ") for p in prompts]
        return Conditioning(torch.tensor(rows).unsqueeze(1))


def test_nearest_concepts_are_the_closest_of_the_same_domain_in_the_text_encoders_space():
    assert robustness.nearest_concepts(_EmbeddingBackend(), "red") == ["blue", "yellow"]
    assert robustness.nearest_concepts(_EmbeddingBackend(), "stripes", k=1) == ["checker"]


def test_evaluate_edit_adds_each_attack_per_concept(toy_backend, toy_classifiers, monkeypatch):
    from spare_core.toy import harness

    calls = []
    monkeypatch.setattr(harness, "rephrasing_attack", lambda *a, **k: calls.append(("rephrasing", k)) or {"ua": None})
    monkeypatch.setattr(harness, "concept_images", lambda backend, concept: calls.append(("images", concept)) or "imgs")
    monkeypatch.setattr(
        harness, "concept_inversion",
        lambda backend, clf, concept, edit, images: calls.append(("inversion", edit is None)) or {"value": 0.5},
    )  # fmt: skip
    unchanged = WeightDelta(toy_backend.denoiser(), ["conv_in"])
    base = BaseGrids(steps=3)
    kwargs = dict(classifiers=toy_classifiers, seeds=[0], templates=["evaluation"], base=base, strength=0.5)
    report = evaluate_edit(toy_backend, [ConceptPair("red", "plain")], unchanged, attacks=harness.ATTACKS, **kwargs)
    entry = report.as_dict()["robustness"]["red"]
    assert entry["neighbours"]["evaluation"]["after"] == entry["neighbours"]["evaluation"]["base"]  # nothing changed
    assert entry["inversion"] == {"success": {"value": 0.5}, "base": {"value": 0.5}}
    assert calls[0][0] == "rephrasing" and calls[0][1]["steps"] == 3
    assert [c for c in calls[1:]] == [("images", "red"), ("inversion", True), ("inversion", False)]
    calls.clear()
    evaluate_edit(toy_backend, [ConceptPair("red", "plain")], unchanged, attacks=["inversion"], **kwargs)
    assert calls == [("inversion", False)]  # the base model's attack is kept in BaseGrids
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate_edit(toy_backend, [ConceptPair("red", "plain")], unchanged, attacks=["jailbreak"], **kwargs)
