"""Generate from the toy model and judge the results with the toy classifiers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..backend import DiffusionBackend
from ..sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS

__all__ = ["DEFAULT_GUIDANCE", "DEFAULT_STEPS", "GridResult", "generate_grid", "generate_triples"]
from .classifier import ToyClassifier
from .world import EVAL_TEMPLATE, OBJECTS, STYLES


@dataclass
class GridResult:
    """Generations of every object x style prompt and how the classifiers read them."""

    images: torch.Tensor  # [len(objects) * len(styles) * seeds, 3, H, W]
    object_labels: torch.Tensor
    style_labels: torch.Tensor
    object_pred: torch.Tensor
    style_pred: torch.Tensor

    @property
    def object_accuracy(self) -> float:
        return float((self.object_pred == self.object_labels).float().mean())

    @property
    def style_accuracy(self) -> float:
        return float((self.style_pred == self.style_labels).float().mean())

    def accuracy_by(self, attribute: str) -> dict[str, dict[str, float]]:
        """Object and style accuracy per object (``attribute='object'``) or per style."""
        labels = self.object_labels if attribute == "object" else self.style_labels
        names = OBJECTS if attribute == "object" else STYLES
        table = {}
        for idx, name in enumerate(names):
            sel = labels == idx
            if sel.any():
                table[name] = {
                    "object_accuracy": float((self.object_pred[sel] == self.object_labels[sel]).float().mean()),
                    "style_accuracy": float((self.style_pred[sel] == self.style_labels[sel]).float().mean()),
                }
        return table


def generate_grid(
    backend: DiffusionBackend,
    object_clf: ToyClassifier,
    style_clf: ToyClassifier,
    seeds: Sequence[int],
    objects: Sequence[str] = OBJECTS,
    styles: Sequence[str] = STYLES,
    template: str = EVAL_TEMPLATE,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
) -> GridResult:
    """Generate ``template`` for every object x style x seed and classify the images.

    Images are ordered seed-major, then object, then style.
    """
    triples = [(s, o, st) for s in seeds for o in objects for st in styles]
    return generate_triples(backend, object_clf, style_clf, triples, template, steps, guidance_scale)


def generate_triples(
    backend: DiffusionBackend,
    object_clf: ToyClassifier,
    style_clf: ToyClassifier,
    triples: Sequence[tuple[int, str, str]],
    template: str = EVAL_TEMPLATE,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    names: Mapping[str, str] | None = None,
) -> GridResult:
    """Generate ``template`` for each (seed, object, style) triple, in order, and classify the images.

    ``names`` maps a concept to the name the prompts use for it (e.g. ``{"red": "crimson"}``);
    other concepts are named by their own word.
    """
    names = names or {}
    prompts = [template.format(object=names.get(o, o), style=names.get(st, st)) for _, o, st in triples]
    images = backend.sample(prompts, [s for s, _, _ in triples], steps, guidance_scale)
    object_labels = torch.tensor([OBJECTS.index(o) for _, o, _ in triples])
    style_labels = torch.tensor([STYLES.index(st) for _, _, st in triples])
    return GridResult(images, object_labels, style_labels, object_clf.predict(images), style_clf.predict(images))
