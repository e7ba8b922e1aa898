"""UnlearnCanvas-style scores of an erasure on the toy world (as UnlearnCanvas defines them).

For an erased concept X of one domain (styles or objects):
UA  = share of generations for X's prompts *not* classified as X;
IRA = accuracy on the other concepts of X's domain;
CRA = accuracy of the other domain on prompts without X.
Also: the surrogate rate (generations for X classified as the surrogate) and
the other attribute's accuracy on X's prompts (e.g. the object is still right
when a style is erased).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..adapter import SparseLoRA
from ..backend import DiffusionBackend
from ..config import ConceptPair
from ..sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS
from .classifier import ToyClassifier
from .evaluate import GridResult, generate_grid, generate_triples
from .world import ALTERNATIVE_NAMES, EVAL_TEMPLATE, OBJECTS, PLAIN_STYLE, STYLES

#: The styles an evaluation grid uses: every style but the surrogate look.
GRID_STYLES = tuple(s for s in STYLES if s != PLAIN_STYLE)
#: Robustness figures count only the names the base model draws correctly at least this often.
MIN_BASE_RATE = 0.9


@dataclass
class ErasureScores:
    concept: str
    domain: str
    ua: float
    ira: float
    cra: float
    surrogate_rate: float
    other_attribute: float  # accuracy of the other domain on the erased prompts
    erased_generations: int

    def as_dict(self) -> dict:
        return asdict(self)


def domain_of(concept: str) -> str:
    if concept in STYLES:
        return "style"
    if concept in OBJECTS:
        return "object"
    raise ValueError(f"{concept!r} is not a toy object or style")


def concept_prompts(concept: str) -> list[tuple[str, str]]:
    """The (object, style) of each grid prompt that shows ``concept``: a style on every object,
    an object in every grid style."""
    if domain_of(concept) == "style":
        return [(o, concept) for o in OBJECTS]
    return [(concept, st) for st in GRID_STYLES]


def concept_triples(concept: str, seeds: Sequence[int]) -> list[tuple[int, str, str]]:
    """``(seed, object, style)`` of every :func:`concept_prompts` prompt on every seed, prompt-major."""
    return [(seed, o, st) for o, st in concept_prompts(concept) for seed in seeds]


def concept_readings(grid: GridResult, concept: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels, predictions)`` of the classifier of ``concept``'s domain on ``grid``."""
    if domain_of(concept) == "style":
        return grid.style_labels, grid.style_pred
    return grid.object_labels, grid.object_pred


def preview_prompts(concept: str) -> tuple[list[str], list[str]]:
    """Prompts for a before/after grid: three naming the concept, three retained ones (evaluation template)."""
    if domain_of(concept) == "style":
        erased = [EVAL_TEMPLATE.format(object=o, style=concept) for o in OBJECTS[:3]]
        others = [s for s in STYLES if s not in (concept, "plain")]
        retained = [EVAL_TEMPLATE.format(object=o, style=s) for o, s in zip(OBJECTS[3:], others, strict=False)]
    else:
        erased = [EVAL_TEMPLATE.format(object=concept, style=s) for s in STYLES[:3]]
        others = [o for o in OBJECTS if o != concept]
        retained = [EVAL_TEMPLATE.format(object=o, style=s) for o, s in zip(others, STYLES[3:6], strict=False)]
    return erased, retained[:3]


def evaluation_grid(
    backend: DiffusionBackend,
    classifiers: tuple[ToyClassifier, ToyClassifier],
    seeds: Sequence[int],
    template: str = EVAL_TEMPLATE,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
) -> GridResult:
    """Every object x (non-plain) style prompt for every seed, classified."""
    return generate_grid(backend, *classifiers, seeds, OBJECTS, GRID_STYLES, template, steps, guidance_scale)


def focused_evaluation(
    backend: DiffusionBackend,
    classifiers: tuple[ToyClassifier, ToyClassifier],
    pairs: Sequence[ConceptPair],
    erased_seeds: Sequence[int],
    other_seeds: Sequence[int],
    template: str = EVAL_TEMPLATE,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
) -> GridResult:
    """The evaluation grid with more seeds where it matters: ``erased_seeds`` for prompts that
    name an erased concept, ``other_seeds`` for the rest (IRA and CRA).

    A style has 6 object prompts, an object 6 style prompts, so 8 erased seeds
    give 48 generations of each erased concept at a third of a full 8-seed grid's cost.
    """
    erased = {p.concept for p in pairs}
    triples = [
        (seed, o, st)
        for o in OBJECTS
        for st in GRID_STYLES
        for seed in (erased_seeds if {o, st} & erased else other_seeds)
    ]
    return generate_triples(backend, *classifiers, triples, template, steps, guidance_scale)


#: The metrics of one erased concept, each a count of k successes in n generations.
METRICS = ("ua", "ira", "cra", "surrogate_rate", "other_attribute")


def erasure_outcomes(grid: GridResult, pairs: Sequence[ConceptPair]) -> list[dict[str, torch.Tensor]]:
    """For each erased concept, every metric of :data:`METRICS` as one boolean per generation it counts.

    UA counts generations of the concept's prompts not classified as the
    concept; IRA the other concepts of its domain (other erased concepts
    excluded) classified right; CRA the other domain classified right on
    prompts without the concept. Generations keep the grid's order, so two
    edits evaluated on the same grid can be compared generation by generation.
    """
    erased = {p.concept for p in pairs}
    out = []
    for pair in pairs:
        if domain_of(pair.concept) == "style":
            labels, pred, other_labels, other_pred, names = (
                grid.style_labels, grid.style_pred, grid.object_labels, grid.object_pred, STYLES,
            )  # fmt: skip
        else:
            labels, pred, other_labels, other_pred, names = (
                grid.object_labels, grid.object_pred, grid.style_labels, grid.style_pred, OBJECTS,
            )  # fmt: skip
        target = names.index(pair.concept)
        on_concept = labels == target
        others = ~torch.tensor([names[int(i)] in erased for i in labels], dtype=torch.bool)
        surrogate = names.index(pair.surrogate) if pair.surrogate in names else -1
        out.append(
            {
                "ua": pred[on_concept] != target,
                "ira": pred[others] == labels[others],
                "cra": other_pred[~on_concept] == other_labels[~on_concept],
                "surrogate_rate": pred[on_concept] == surrogate,
                "other_attribute": other_pred[on_concept] == other_labels[on_concept],
            }
        )
    return out


def erasure_counts(grid: GridResult, pairs: Sequence[ConceptPair]) -> list[dict[str, tuple[int, int]]]:
    """For each erased concept, every metric of :data:`METRICS` as ``(k, n)`` on one evaluation grid."""
    return [counts_of(row) for row in erasure_outcomes(grid, pairs)]


def counts_of(outcomes: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """``(k, n)`` per metric of one concept's :func:`erasure_outcomes`."""
    return {metric: (int(hits.sum()), int(hits.numel())) for metric, hits in outcomes.items()}


def score(grid: GridResult, pairs: Sequence[ConceptPair]) -> list[ErasureScores]:
    """Scores of each erased concept on one evaluation grid."""
    scores = []
    for pair, counts in zip(pairs, erasure_counts(grid, pairs), strict=True):
        rates = {name: k / n if n else float("nan") for name, (k, n) in counts.items()}
        scores.append(
            ErasureScores(
                concept=pair.concept,
                domain=domain_of(pair.concept),
                erased_generations=counts["ua"][1],
                **rates,
            )
        )
    return scores


def before_after_scores(
    backend: DiffusionBackend,
    classifiers: tuple[ToyClassifier, ToyClassifier],
    pairs: Sequence[ConceptPair],
    seeds: Sequence[int],
    adapter: SparseLoRA,
    strength: float = 1.0,
) -> tuple[list[ErasureScores], list[ErasureScores], int]:
    """The scores of each erased concept without and with ``adapter`` on the evaluation grid of ``seeds``,
    and the number of generations of each grid."""
    base_grid = evaluation_grid(backend, classifiers, seeds)
    with adapter.applied(strength):
        erased_grid = evaluation_grid(backend, classifiers, seeds)
    return score(base_grid, pairs), score(erased_grid, pairs), len(base_grid.images)


def alternative_name_accuracy(
    backend: DiffusionBackend,
    classifiers: tuple[ToyClassifier, ToyClassifier],
    concept: str,
    seeds: Sequence[int],
    template: str = EVAL_TEMPLATE,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
) -> dict[str, dict]:
    """For each alternative name of ``concept`` (its synonyms and phrasings): how often generations
    of prompts naming it that way show the concept.

    A style is drawn on every object, an object in every grid style, for every seed.
    Returns ``{name: {"k": correct, "n": generations, "accuracy": k / n}}``.
    """
    triples = concept_triples(concept, seeds)
    table = {}
    for name in ALTERNATIVE_NAMES.get(concept, ()):
        grid = generate_triples(backend, *classifiers, triples, template, steps, guidance_scale, names={concept: name})
        labels, pred = concept_readings(grid, concept)
        k, n = int((pred == labels).sum()), len(labels)
        table[name] = {"k": k, "n": n, "accuracy": k / n}
    return table


def alternative_name_ua(before: dict[str, dict], after: dict[str, dict], min_base_rate: float = MIN_BASE_RATE) -> dict:
    """UA of an erasure on the concept's other names, counting only names the base model draws
    correctly at least ``min_base_rate`` of the time (an unknown word is erased for free).

    ``before`` and ``after`` are ``alternative_name_accuracy`` tables of the base and the erased model.
    """
    counted = [name for name, row in before.items() if row["accuracy"] >= min_base_rate]
    k = sum(after[name]["n"] - after[name]["k"] for name in counted)
    n = sum(after[name]["n"] for name in counted)
    return {
        "ua": k / n if n else None,
        "k": k,
        "n": n,
        "names_counted": counted,
        "base_rate": {name: round(row["accuracy"], 4) for name, row in before.items()},
        "min_base_rate": min_base_rate,
    }
