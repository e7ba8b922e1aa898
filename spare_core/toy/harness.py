"""The toy-world evaluation harness behind ``spare eval``: every metric with its interval, on both templates.

For an edit of the toy model (a SPARE LoRA, a baseline's weight delta or
LoRA, anything with ``applied(strength)``) and the concepts it erases, it
draws every object x style prompt for several seeds, with and without the
edit, on the evaluation template and the held-out one, and reports:

* UA, IRA, CRA, the surrogate rate and the other attribute's accuracy as
  ``{k, n, value, ci_low, ci_high}`` (95 % Wilson intervals), per concept and
  pooled over the concepts, each beside the base model's value;
* retain fidelity: how much the retained prompts' images change on the same
  seeds (mean absolute pixel difference, in [0, 1] units, and the relative
  distance of the toy classifiers' features), with 95 % intervals;
* a per-prompt matrix: for each object x style prompt, the share of seeds
  whose image shows both the prompt's object and its style.

With ``attacks``, each erased concept also gets the robustness figures of
:mod:`spare_core.toy.robustness` and :mod:`spare_core.toy.attacks`: UA on
rephrased prompts, accuracy on its nearest neighbours, and the success of a
concept-inversion attack beside its success on the base model.

Base grids are the same for every edit: :class:`BaseGrids` keeps them (and the
base model's side of the attacks).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ..backend import DiffusionBackend
from ..config import ConceptPair
from ..sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS
from ..stats import proportion
from .attacks import concept_images, concept_inversion
from .classifier import ToyClassifier
from .erasure_eval import GRID_STYLES, METRICS, counts_of, domain_of, erasure_outcomes, evaluation_grid
from .evaluate import GridResult
from .robustness import nearest_concepts, neighbour_accuracy, rephrasing_attack
from .world import EVAL_TEMPLATE, HELD_OUT_TEMPLATE, OBJECTS, STYLES

#: The two caption templates an erasure is evaluated on.
TEMPLATES = {"evaluation": EVAL_TEMPLATE, "held_out": HELD_OUT_TEMPLATE}
#: Seeds per prompt by default: a style's 6 prompts x 5 seeds = 30 erased generations per template,
#: and over the 11 concepts of a benchmark 330, so a pooled interval is about +-2 points wide at UA 0.97.
DEFAULT_SEEDS = 5
#: The robustness checks ``evaluate_edit`` can add, cheapest first.
ATTACKS = ("neighbours", "rephrasing", "inversion")


class BaseGrids:
    """The base model's evaluation grids, drawn once per (template, seeds) and shared by every edit."""

    def __init__(self, steps: int = DEFAULT_STEPS, guidance_scale: float = DEFAULT_GUIDANCE):
        self.steps, self.guidance_scale = steps, guidance_scale
        self._grids: dict[tuple[str, tuple[int, ...]], GridResult] = {}
        self.rephrasing: dict = {}  # the base model's readings of each rephrasing
        self.inversion: dict[str, tuple[torch.Tensor, dict]] = {}  # concept -> (attack images, base success)
        self.neighbours: dict[str, list[str]] = {}

    def get(
        self, backend: DiffusionBackend, classifiers: tuple[ToyClassifier, ToyClassifier], template: str, seeds
    ) -> GridResult:
        key = (template, tuple(seeds))
        if key not in self._grids:
            self._grids[key] = evaluation_grid(backend, classifiers, key[1], template, self.steps, self.guidance_scale)
        return self._grids[key]


def _mean_interval(values: torch.Tensor, digits: int = 4) -> dict:
    """Mean of ``values`` with a normal 95 % interval of the mean."""
    n = len(values)
    mean = float(values.mean())
    half = 1.96 * float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return {
        "n": n,
        "value": round(mean, digits),
        "ci_low": round(mean - half, digits),
        "ci_high": round(mean + half, digits),
    }


def retain_fidelity(
    base: GridResult, after: GridResult, retained: torch.Tensor, classifiers: Sequence[ToyClassifier]
) -> dict:
    """How much the retained images (mask ``retained``) changed between the two grids of the same seeds."""
    if not retained.any():
        return {}
    before_images, after_images = base.images[retained], after.images[retained]
    pixel = (after_images - before_images).abs().mean(dim=(1, 2, 3)) / 2  # [-1, 1] images: /2 gives [0, 1] units
    feats_before = torch.cat([c.embed(before_images) for c in classifiers], dim=1)
    feats_after = torch.cat([c.embed(after_images) for c in classifiers], dim=1)
    feature = (feats_after - feats_before).norm(dim=1) / feats_before.norm(dim=1).clamp_min(1e-8)
    return {"pixel_distance": _mean_interval(pixel), "feature_distance": _mean_interval(feature)}


def prompt_matrix(grid: GridResult) -> dict[str, dict[str, tuple[int, int]]]:
    """``{object: {style: (k, n)}}``: generations of each prompt that show both its object and its style."""
    both = (grid.object_pred == grid.object_labels) & (grid.style_pred == grid.style_labels)
    table: dict[str, dict[str, tuple[int, int]]] = {}
    for o, obj in enumerate(OBJECTS):
        table[obj] = {}
        for style in GRID_STYLES:
            sel = (grid.object_labels == o) & (grid.style_labels == STYLES.index(style))
            table[obj][style] = (int(both[sel].sum()), int(sel.sum()))
    return table


def _retained_mask(grid: GridResult, pairs: Sequence[ConceptPair]) -> torch.Tensor:
    mask = torch.ones(len(grid.object_labels), dtype=torch.bool)
    for pair in pairs:
        if domain_of(pair.concept) == "style":
            mask &= grid.style_labels != STYLES.index(pair.concept)
        else:
            mask &= grid.object_labels != OBJECTS.index(pair.concept)
    return mask


@dataclass
class TemplateResult:
    """One template's counts for an edit and for the base model."""

    outcomes: list[dict[str, torch.Tensor]]  # per erased concept: one boolean per generation counted
    base_outcomes: list[dict[str, torch.Tensor]]
    fidelity: dict
    matrix: dict[str, dict[str, tuple[int, int]]]
    base_matrix: dict[str, dict[str, tuple[int, int]]]

    @property
    def counts(self) -> list[dict[str, tuple[int, int]]]:
        return [counts_of(row) for row in self.outcomes]

    @property
    def base_counts(self) -> list[dict[str, tuple[int, int]]]:
        return [counts_of(row) for row in self.base_outcomes]


@dataclass
class EvalReport:
    """Everything ``spare eval`` measures for one edit, per template."""

    pairs: list[ConceptPair]
    seeds: list[int]
    templates: dict[str, TemplateResult] = field(default_factory=dict)
    robustness: dict[str, dict] = field(default_factory=dict)  # per erased concept, with ``attacks``

    def as_dict(self, outcomes: bool = False) -> dict:
        """Everything as JSON-ready values; with ``outcomes`` also each generation's result (0/1, in grid
        order), for paired comparisons of edits evaluated on the same seeds."""
        out: dict = {
            "concepts": [{"concept": p.concept, "surrogate": p.surrogate} for p in self.pairs],
            "seeds": self.seeds,
            "templates": {},
        }
        for name, result in self.templates.items():
            out["templates"][name] = {
                "template": TEMPLATES.get(name, name),
                "pooled": {**metric_table(result.counts), "base": metric_table(result.base_counts)},
                "per_concept": {
                    pair.concept: {**metric_table([c]), "base": metric_table([b])}
                    for pair, c, b in zip(self.pairs, result.counts, result.base_counts, strict=True)
                },
                "retain_fidelity": result.fidelity,
                "prompt_matrix": _matrix_values(result.matrix),
                "base_prompt_matrix": _matrix_values(result.base_matrix),
            }
            if outcomes:
                out["templates"][name]["outcomes"] = {
                    pair.concept: {metric: hits.int().tolist() for metric, hits in row.items()}
                    for pair, row in zip(self.pairs, result.outcomes, strict=True)
                }
        if self.robustness:
            out["robustness"] = self.robustness
        return out


def pooled_counts(counts: Iterable[dict[str, tuple[int, int]]]) -> dict[str, tuple[int, int]]:
    """Sum of ``(k, n)`` per metric over concepts (or over separate edits)."""
    total: dict[str, tuple[int, int]] = {}
    for row in counts:
        for metric, (k, n) in row.items():
            k0, n0 = total.get(metric, (0, 0))
            total[metric] = (k0 + k, n0 + n)
    return total


def metric_table(counts: Iterable[dict[str, tuple[int, int]]]) -> dict[str, dict | None]:
    """Every metric pooled over ``counts`` as ``{k, n, value, ci_low, ci_high}`` (None where n is 0)."""
    pooled = pooled_counts(counts)
    return {m: proportion(*pooled[m]) if pooled.get(m, (0, 0))[1] else None for m in METRICS}


def _matrix_values(matrix: dict[str, dict[str, tuple[int, int]]]) -> dict[str, dict[str, float | None]]:
    return {o: {s: (round(k / n, 4) if n else None) for s, (k, n) in row.items()} for o, row in matrix.items()}


def evaluate_edit(
    backend: DiffusionBackend,
    pairs: Sequence[ConceptPair],
    edit,
    *,
    classifiers: tuple[ToyClassifier, ToyClassifier] | None = None,
    seeds: Sequence[int] = tuple(range(DEFAULT_SEEDS)),
    templates: Sequence[str] = tuple(TEMPLATES),
    strength: float = 1.0,
    base: BaseGrids | None = None,
    attacks: Sequence[str] = (),
) -> EvalReport:
    """Evaluate ``edit`` (anything with ``applied(strength)``) erasing ``pairs`` on every template named.

    ``classifiers`` are the toy object and style classifiers (default: the shipped ones);
    pass the same ``base`` to evaluate several edits against one set of base grids.
    ``attacks`` names robustness checks of :data:`ATTACKS` to add per erased concept.
    """
    if classifiers is None:
        from .pipeline import load_toy_classifiers

        classifiers = load_toy_classifiers()
    unknown = [t for t in templates if t not in TEMPLATES]
    if unknown:
        raise ValueError(f"unknown template {unknown[0]!r}; use {', '.join(TEMPLATES)}")
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack {unknown[0]!r}; use some of {', '.join(ATTACKS)}")
    for pair in pairs:
        domain_of(pair.concept)  # a clear error for a concept the toy world does not have
    base = base or BaseGrids()
    report = EvalReport(list(pairs), list(seeds))
    at_strength = _AtStrength(edit, strength)
    for pair in pairs if attacks else ():
        report.robustness[pair.concept] = {}
        if "neighbours" in attacks and pair.concept not in base.neighbours:
            base.neighbours[pair.concept] = nearest_concepts(backend, pair.concept)
    for name in templates:
        template = TEMPLATES[name]
        base_grid = base.get(backend, classifiers, template, seeds)
        with edit.applied(strength):
            after = evaluation_grid(backend, classifiers, seeds, template, base.steps, base.guidance_scale)
        if "neighbours" in attacks:
            for pair in pairs:
                report.robustness[pair.concept].setdefault("neighbours", {})[name] = neighbour_accuracy(
                    base_grid, after, base.neighbours[pair.concept]
                )
        report.templates[name] = TemplateResult(
            outcomes=erasure_outcomes(after, pairs),
            base_outcomes=erasure_outcomes(base_grid, pairs),
            fidelity=retain_fidelity(base_grid, after, _retained_mask(after, pairs), classifiers),
            matrix=prompt_matrix(after),
            base_matrix=prompt_matrix(base_grid),
        )
    for pair in pairs if attacks else ():
        entry = report.robustness[pair.concept]
        if "rephrasing" in attacks:
            entry["rephrasing"] = rephrasing_attack(
                backend, classifiers, pair.concept, at_strength, base_cache=base.rephrasing, steps=base.steps,
                guidance_scale=base.guidance_scale,
            )  # fmt: skip
        if "inversion" in attacks:
            if pair.concept not in base.inversion:
                images = concept_images(backend, pair.concept)
                base.inversion[pair.concept] = (images, concept_inversion(backend, classifiers, pair.concept, None,
                                                                          images=images))  # fmt: skip
            images, ceiling = base.inversion[pair.concept]
            entry["inversion"] = {
                "success": concept_inversion(backend, classifiers, pair.concept, at_strength, images=images),
                "base": ceiling,
            }
    return report


class _AtStrength:
    """An edit whose ``applied()`` uses a fixed strength (what the attacks call)."""

    def __init__(self, edit, strength: float):
        self.edit, self.strength = edit, strength

    def applied(self, strength: float | None = None):
        return self.edit.applied(self.strength if strength is None else strength)

    def parameters(self):
        return self.edit.parameters() if hasattr(self.edit, "parameters") else iter(())


# --------------------------------------------------------------------------- Markdown and pictures

_LABELS = {
    "ua": "UA",
    "ira": "IRA",
    "cra": "CRA",
    "surrogate_rate": "surrogate rate",
    "other_attribute": "other attribute",
}


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "–"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}] ({entry['k']}/{entry['n']})"


def report_markdown(report: dict) -> str:
    """The pooled metrics of an :meth:`EvalReport.as_dict` as a Markdown table, one column per template."""
    names = list(report["templates"])
    concepts = ", ".join(f"{c['concept']} -> {c['surrogate']}" for c in report["concepts"])
    lines = [
        f"Erased: {concepts}; {len(report['seeds'])} seeds per prompt; 95 % Wilson intervals; base model in brackets.",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for metric, label in _LABELS.items():
        cells = []
        for name in names:
            pooled = report["templates"][name]["pooled"]
            base = pooled["base"].get(metric)
            base_text = f" (base {base['value']:.3f})" if base else ""
            cells.append(_cell(pooled.get(metric)) + base_text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, label in (("pixel_distance", "retained pixel change"), ("feature_distance", "retained feature change")):
        cells = []
        for name in names:
            entry = report["templates"][name]["retain_fidelity"].get(key)
            cells.append(f"{entry['value']:.4f} [{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]" if entry else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if report.get("robustness"):
        lines += ["", robustness_markdown(report["robustness"])]
    return "\n".join(lines) + "\n"


def robustness_markdown(robustness: dict) -> str:
    """Per erased concept: UA on rephrasings, accuracy on the nearest neighbours, concept-inversion success."""
    lines = [
        "| concept | UA on rephrasings | nearest neighbours: accuracy after (base) | inversion success (base) |",
        "|---|---|---|---|",
    ]
    for concept, entry in robustness.items():
        reph = entry.get("rephrasing")
        reph_text = _cell(reph["ua"]) if reph else "–"
        neigh = entry.get("neighbours", {}).get("evaluation") or next(iter(entry.get("neighbours", {}).values()), None)
        neigh_text = (
            f"{', '.join(neigh['neighbours'])}: {neigh['after']['value']:.3f} ({neigh['base']['value']:.3f})"
            if neigh else "–"
        )  # fmt: skip
        inv = entry.get("inversion")
        inv_text = f"{_cell(inv['success'])} ({inv['base']['value']:.3f})" if inv else "–"
        lines.append(f"| {concept} | {reph_text} | {neigh_text} | {inv_text} |")
    return "\n".join(lines) + "\n"


def plot_prompt_matrix(report: dict, template: str, path) -> None:
    """Heat maps of the per-prompt matrix, base model and edited model side by side, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..plotting import save_figure

    entry = report["templates"][template]
    fig = Figure(figsize=(9.0, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    erased = {c["concept"] for c in report["concepts"]}
    image = None
    for i, (key, title) in enumerate((("base_prompt_matrix", "base model"), ("prompt_matrix", "edited model"))):
        ax = fig.add_subplot(1, 2, i + 1)
        matrix = entry[key]
        objects, styles = list(matrix), list(next(iter(matrix.values())))
        values = [[matrix[o][s] if matrix[o][s] is not None else float("nan") for s in styles] for o in objects]
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(styles)), [f"*{s}*" if s in erased else s for s in styles], rotation=45, ha="right")
        ax.set_yticks(range(len(objects)), [f"*{o}*" if o in erased else o for o in objects])
        ax.set_title(f"{title}, {template} template")
        for r, row in enumerate(values):
            for c, v in enumerate(row):
                if v == v:
                    ax.text(
                        c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black"
                    )
    fig.colorbar(image, ax=fig.axes[-1], shrink=0.8, label="share drawn as prompted")
    save_figure(fig, path)


def plot_tradeoff(points: dict[str, list[tuple[float, float]]], path) -> None:
    """UA against min(IRA, CRA), one point per (method, concept): ``points`` maps a method to its points."""
    from ..plotting import save_figure, subplots

    fig, ax = subplots(width=7.0, height=4.5)
    markers = "osD^v<>phX*P"
    for i, (label, xy) in enumerate(points.items()):
        ax.scatter([x for x, _ in xy], [y for _, y in xy], label=label, marker=markers[i % len(markers)], s=28,
                   alpha=0.8)  # fmt: skip
    ax.set_xlabel("min(IRA, CRA), evaluation template")
    ax.set_ylabel("UA")
    ax.set_title("Erasure against retention, one point per method and concept")
    ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, path)
