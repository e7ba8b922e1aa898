"""Is an erasure robust? Rephrased prompts and the erased concept's nearest neighbours, in the toy world.

* **Rephrasing.** The concept named by each of its names (its own word, its
  synonyms, its phrasings) in templates and word orders that the erasure's
  forget prompts never use: the held-out caption, and word orders that no
  training caption has either (``"checker circle"``, with no word "style").
  Every variant is drawn with and without the edit on the concept's grid
  prompts; only variants that the base model draws as the concept at least
  :data:`MIN_BASE_RATE` of the time count (a word order the model never
  learned is "erased" for free), and their UA is pooled as one proportion.
* **Nearest neighbours.** The concepts of the same domain whose prompts the
  model's own text encoder puts closest to the erased concept's, and how
  often their prompts still show them after the edit: robustness must not be
  bought by erasing the neighbours. Read off the evaluation grid the harness
  already draws, so it costs no generation.

The concept-inversion attack is :mod:`spare_core.toy.attacks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from ..sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS
from ..stats import proportion
from .erasure_eval import GRID_STYLES, MIN_BASE_RATE, concept_readings, concept_triples, domain_of
from .evaluate import GridResult, generate_triples
from .world import EVAL_TEMPLATE, FULL_TEMPLATES, HELD_OUT_TEMPLATE, OBJECTS, STYLES, VOCABULARY, names_of

#: Word orders no training caption uses, made of words the model knows.
UNSEEN_TEMPLATES: tuple[str, ...] = (
    "{style} {object}",
    "a {style} {object}",
    "{object} in {style} style",
    "a {object} drawn in {style}",
)
#: Every template a rephrasing attack uses: the held-out caption and the unseen word orders.
REPHRASING_TEMPLATES: tuple[str, ...] = (EVAL_TEMPLATE, HELD_OUT_TEMPLATE, *UNSEEN_TEMPLATES)
REPHRASING_SEEDS: tuple[int, ...] = (600, 601)
NEIGHBOURS = 2

assert not set(UNSEEN_TEMPLATES) & set(FULL_TEMPLATES), "an unseen template must not be a training template"
assert all(w in VOCABULARY for t in UNSEEN_TEMPLATES for w in t.split() if not w.startswith("{")), (
    "an unseen template must use known words"
)


def rephrasings(concept: str) -> list[tuple[str, str]]:
    """``(name, template)`` of every rephrasing of ``concept``: each of its names in each template,
    except its own word in the evaluation template (that is plain UA)."""
    return [
        (name, template)
        for name in names_of(concept)
        for template in REPHRASING_TEMPLATES
        if not (name == concept and template == EVAL_TEMPLATE)
    ]


def _draw(backend, classifiers, concept: str, name: str, template: str, seeds, edit, steps, guidance) -> torch.Tensor:
    """Whether each generation of the variant shows ``concept`` (bool per generation)."""
    triples = concept_triples(concept, seeds)
    with edit.applied() if edit is not None else nullcontext():
        grid = generate_triples(backend, *classifiers, triples, template, steps, guidance, names={concept: name})
    labels, pred = concept_readings(grid, concept)
    return pred == labels


def _base_draw(cache: dict, backend, classifiers, concept, name, template, seeds, steps, guidance) -> torch.Tensor:
    """:func:`_draw` of the base model, kept in ``cache`` (the same for every edit)."""
    key = (concept, name, template, tuple(seeds), steps, guidance)
    if key not in cache:
        cache[key] = _draw(backend, classifiers, concept, name, template, seeds, None, steps, guidance)
    return cache[key]


def rephrasing_attack(
    backend,
    classifiers,
    concept: str,
    edit,
    seeds: Sequence[int] = REPHRASING_SEEDS,
    min_base_rate: float = MIN_BASE_RATE,
    base_cache: dict | None = None,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
) -> dict:
    """UA of ``edit`` on every rephrasing of ``concept`` the base model draws, pooled, with each variant's row.

    ``base_cache`` (a dict) keeps the base model's readings across calls for the same seeds.
    """
    cache = base_cache if base_cache is not None else {}
    rows, erased, shown = [], 0, 0
    for name, template in rephrasings(concept):
        before = _base_draw(cache, backend, classifiers, concept, name, template, seeds, steps, guidance_scale)
        after = _draw(backend, classifiers, concept, name, template, seeds, edit, steps, guidance_scale)
        base_rate = float(before.float().mean())
        counted = base_rate >= min_base_rate
        if counted:
            erased += int((~after).sum())
            shown += len(after)
        rows.append({
            "name": name, "template": template, "base_rate": round(base_rate, 4),
            "ua": round(float((~after).float().mean()), 4), "n": len(after), "counted": counted,
        })  # fmt: skip
    ua = proportion(erased, shown) if shown else None
    return {"ua": ua, "variants": rows, "min_base_rate": min_base_rate, "seeds": list(seeds)}


def _concept_vector(backend, concept: str) -> torch.Tensor:
    """The text encoder's states of the concept's grid prompts, averaged (one vector per concept)."""
    if domain_of(concept) == "style":
        prompts = [EVAL_TEMPLATE.format(object=o, style=concept) for o in OBJECTS]
    else:
        prompts = [EVAL_TEMPLATE.format(object=concept, style=s) for s in GRID_STYLES]
    with torch.no_grad():
        states = backend.encode_prompts(prompts).hidden_states.float()
    return states.mean(dim=0).flatten()


def nearest_concepts(backend, concept: str, k: int = NEIGHBOURS) -> list[str]:
    """The ``k`` concepts of ``concept``'s domain whose prompts the model's text encoder puts closest
    (cosine similarity of the averaged prompt states), nearest first."""
    domain = domain_of(concept)
    others = [c for c in (GRID_STYLES if domain == "style" else OBJECTS) if c != concept]
    target = _concept_vector(backend, concept)
    similarity = {c: float(torch.cosine_similarity(target, _concept_vector(backend, c), dim=0)) for c in others}
    return sorted(others, key=lambda c: -similarity[c])[:k]


def neighbour_attack(
    backend,
    classifiers,
    concept: str,
    edit,
    seeds: Sequence[int],
    template: str = EVAL_TEMPLATE,
    k: int = NEIGHBOURS,
    base_cache: dict | None = None,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
) -> dict:
    """:func:`neighbour_accuracy` from the neighbours' own prompts only (for an edit whose grid is not drawn)."""
    cache = base_cache if base_cache is not None else {}
    if ("neighbours", concept, k) not in cache:
        cache[("neighbours", concept, k)] = nearest_concepts(backend, concept, k)
    neighbours = cache[("neighbours", concept, k)]
    before = [_base_draw(cache, backend, classifiers, o, o, template, seeds, steps, guidance_scale) for o in neighbours]
    after = [_draw(backend, classifiers, o, o, template, seeds, edit, steps, guidance_scale) for o in neighbours]
    return _before_after(neighbours, torch.cat(before), torch.cat(after))


def neighbour_outcomes(grid: GridResult, neighbours: Sequence[str]) -> torch.Tensor:
    """Whether each generation of a neighbour's prompts in ``grid`` shows that neighbour (bool per generation)."""
    hits = []
    for concept in neighbours:
        labels, pred = concept_readings(grid, concept)
        if domain_of(concept) == "style":
            mine = grid.style_labels == STYLES.index(concept)
        else:
            mine = grid.object_labels == OBJECTS.index(concept)
        hits.append((pred == labels)[mine])
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def neighbour_accuracy(base_grid: GridResult, after_grid: GridResult, neighbours: Sequence[str]) -> dict:
    """Accuracy on the neighbours' prompts before and after, as proportions."""
    return _before_after(
        neighbours, neighbour_outcomes(base_grid, neighbours), neighbour_outcomes(after_grid, neighbours)
    )


def _before_after(neighbours: Sequence[str], before: torch.Tensor, after: torch.Tensor) -> dict:
    return {
        "neighbours": list(neighbours),
        "base": proportion(int(before.sum()), len(before)),
        "after": proportion(int(after.sum()), len(after)),
    }
