"""The UnlearnCanvas evaluation protocol: its prompt grid, sampling settings, classifier input and metrics.

UnlearnCanvas (Zhang et al. 2024, "UnlearnCanvas: Stylized Image Dataset for
Enhanced Machine Unlearning Evaluation in Diffusion Models"; code at
github.com/OPTML-Group/UnlearnCanvas) fine-tunes Stable Diffusion 1.5 on 50
styles x 20 objects and judges an unlearned model with two ViT-Large/16
classifiers, one for the style (51 classes: the 50 styles and the photo style
``Seed_Images``) and one for the object (20 classes). The facts below are taken
from that repository:

- label order: ``theme_available`` and ``class_available`` in
  ``machine_unlearning/evaluation/constants/const.py`` (``Seed_Images`` is at
  index 38, in alphabetical place);
- prompt ``f"A {object} image in {style.replace('_', ' ')} style."`` for every
  style (``Seed_Images`` included) x object, seeds 188, 288, 588, 688 and 888,
  100 DDIM steps (eta 0), guidance 9.0, 512 x 512
  (``machine_unlearning/evaluation/sampling_unlearned_models/esd.py``,
  ``quantitative/accuracy.py``);
- classifier input: resized to 224 x 224 (no crop), normalised with mean and
  std 0.5 (``accuracy.py``);
- per-class accuracy: a style's accuracy pools its 20 objects x 5 seeds; an
  object's pools every style (``Seed_Images`` and the target included) x 5
  seeds (``accuracy.py``);
- UA = 1 - accuracy of the target; IRA = mean accuracy of the other classes of
  the target's domain (``Seed_Images`` excluded for styles); CRA = mean
  accuracy of the other domain (styles without ``Seed_Images``); each
  averaged over the unlearning runs (the maintainers' answer in the
  repository's issue 13; the repository ships no script for this step).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..stats import proportion

STYLES: tuple[str, ...] = (
    "Abstractionism", "Artist_Sketch", "Blossom_Season", "Bricks", "Byzantine", "Cartoon",
    "Cold_Warm", "Color_Fantasy", "Comic_Etch", "Crayon", "Cubism", "Dadaism", "Dapple",
    "Defoliation", "Early_Autumn", "Expressionism", "Fauvism", "French", "Glowing_Sunset",
    "Gorgeous_Love", "Greenfield", "Impressionism", "Ink_Art", "Joy", "Liquid_Dreams",
    "Magic_Cube", "Meta_Physics", "Meteor_Shower", "Monet", "Mosaic", "Neon_Lines", "On_Fire",
    "Pastel", "Pencil_Drawing", "Picasso", "Pop_Art", "Red_Blue_Ink", "Rust", "Seed_Images",
    "Sketch", "Sponge_Dabbed", "Structuralism", "Superstring", "Surrealism", "Ukiyoe",
    "Van_Gogh", "Vibrant_Flow", "Warm_Love", "Warm_Smear", "Watercolor", "Winter",
)  # fmt: skip
OBJECTS: tuple[str, ...] = (
    "Architectures", "Bears", "Birds", "Butterfly", "Cats", "Dogs", "Fishes", "Flame", "Flowers",
    "Frogs", "Horses", "Human", "Jellyfish", "Rabbits", "Sandwiches", "Sea", "Statues", "Towers",
    "Trees", "Waterfalls",
)  # fmt: skip
#: The photo "style" (the dataset's unstylised images): a classifier label, never an unlearning target.
PHOTO_STYLE = "Seed_Images"
SEEDS: tuple[int, ...] = (188, 288, 588, 688, 888)
STEPS = 100
GUIDANCE = 9.0
IMAGE_SIZE = 512
CLASSIFIER_SIZE = 224


@dataclass(frozen=True)
class Protocol:
    """The grid and sampling settings of one evaluation; ``Protocol()`` is UnlearnCanvas as published.

    Tests and quick looks use a miniature (fewer styles, objects and seeds, a
    small image size) with the same code path.
    """

    styles: tuple[str, ...] = STYLES
    objects: tuple[str, ...] = OBJECTS
    seeds: tuple[int, ...] = SEEDS
    steps: int = STEPS
    guidance: float = GUIDANCE
    image_size: int = IMAGE_SIZE
    classifier_size: int = CLASSIFIER_SIZE
    photo_style: str | None = PHOTO_STYLE

    def prompt(self, style: str, obj: str) -> str:
        return f"A {obj} image in {style.replace('_', ' ')} style."

    def grid(self) -> list[tuple[int, str, str]]:
        """Every (seed, style, object) of the answer set, seed-major as the published sampler loops."""
        return [(seed, style, obj) for seed in self.seeds for style in self.styles for obj in self.objects]

    def targets(self, domain: str) -> tuple[str, ...]:
        """The concepts that can be unlearned in ``domain`` (``style`` or ``object``)."""
        if domain == "style":
            return tuple(s for s in self.styles if s != self.photo_style)
        if domain == "object":
            return self.objects
        raise ValueError(f"domain must be 'style' or 'object', got {domain!r}")


def classifier_input(images: torch.Tensor, size: int = CLASSIFIER_SIZE) -> torch.Tensor:
    """Generated images in [-1, 1] as the classifiers take them: resized to ``size`` (bilinear,
    antialiased, like PIL's resize), already in the range Normalize(0.5, 0.5) gives."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@dataclass
class Accuracies:
    """Per-class accuracy of one answer set, as counts: ``{class: (correct, generations)}``."""

    style: dict[str, tuple[int, int]]
    object: dict[str, tuple[int, int]]

    @classmethod
    def from_predictions(
        cls,
        protocol: Protocol,
        grid: Sequence[tuple[int, str, str]],
        style_pred: Sequence[int],
        object_pred: Sequence[int],
    ) -> Accuracies:
        """Count, per style and per object, how often the classifiers named the prompt's class.

        Predictions index ``protocol.styles`` and ``protocol.objects`` (the classifiers' label order).
        """
        if not len(grid) == len(style_pred) == len(object_pred):
            raise ValueError("one style and one object prediction per generation are needed")
        style = {s: [0, 0] for s in protocol.styles}
        obj = {o: [0, 0] for o in protocol.objects}
        for (_, s, o), sp, op in zip(grid, style_pred, object_pred, strict=True):
            style[s][0] += int(protocol.styles[int(sp)] == s)
            style[s][1] += 1
            obj[o][0] += int(protocol.objects[int(op)] == o)
            obj[o][1] += 1
        return cls({k: tuple(v) for k, v in style.items()}, {k: tuple(v) for k, v in obj.items()})


def _pooled(counts: Mapping[str, tuple[int, int]], names: Sequence[str]) -> dict:
    """The mean accuracy of ``names`` as one proportion (every class has the same number of generations,
    so the mean of the accuracies is the pooled rate), with its Wilson interval."""
    sizes = {counts[n][1] for n in names}
    if len(sizes) != 1:
        raise ValueError(f"classes have different numbers of generations ({sorted(sizes)}); the mean is not pooled")
    return proportion(sum(counts[n][0] for n in names), sum(counts[n][1] for n in names))


def unlearning_scores(protocol: Protocol, accuracies: Accuracies, target: str) -> dict:
    """UA, IRA and CRA of one unlearned target, each as ``{k, n, value, ci_low, ci_high}``."""
    if target in protocol.targets("style"):
        domain, own, other = "style", accuracies.style, accuracies.object
        in_domain = [s for s in protocol.targets("style") if s != target]
        cross_domain = list(protocol.targets("object"))
    elif target in protocol.objects:
        domain, own, other = "object", accuracies.object, accuracies.style
        in_domain = [o for o in protocol.objects if o != target]
        cross_domain = list(protocol.targets("style"))
    else:
        raise ValueError(f"{target!r} is neither a style nor an object of the protocol")
    k, n = own[target]
    return {
        "target": target,
        "domain": domain,
        "ua": proportion(n - k, n),
        "ira": _pooled(own, in_domain),
        "cra": _pooled(other, cross_domain),
    }


def average_scores(runs: Sequence[dict]) -> dict:
    """The benchmark's headline: UA, IRA and CRA averaged over unlearning runs of one domain.

    The interval pools the runs' counts (equal sizes, so the pooled rate equals the mean).
    """
    if not runs:
        raise ValueError("no runs to average")
    domains = {r["domain"] for r in runs}
    if len(domains) != 1:
        raise ValueError("average style and object runs separately, as the benchmark reports them")
    out: dict = {"domain": domains.pop(), "runs": len(runs)}
    for metric in ("ua", "ira", "cra"):
        out[metric] = proportion(sum(r[metric]["k"] for r in runs), sum(r[metric]["n"] for r in runs))
    if all("fid" in r for r in runs):
        out["fid"] = round(sum(r["fid"] for r in runs) / len(runs), 3)
    return out


# --------------------------------------------------------------------------- running the protocol


def load_classifier(path, expected_classes: int):
    """A ViT classifier from a safetensors file (``spare convert`` makes one from the published ``.pth``)."""
    from pathlib import Path

    from ..lora_file import read_safetensors
    from .vit import ViTClassifier

    tensors, _ = read_safetensors(Path(path))
    model = ViTClassifier.from_state_dict(tensors)
    if model.config.num_classes != expected_classes:
        raise ValueError(
            f"{Path(path).name} has {model.config.num_classes} classes; this classifier needs {expected_classes}"
        )
    return model


@torch.no_grad()
def generate_and_classify(
    backend,
    protocol: Protocol,
    style_classifier: torch.nn.Module,
    object_classifier: torch.nn.Module,
    edit=None,
    batch_size: int = 8,
    on_batch=None,
    on_images=None,
) -> Accuracies:
    """Draw the protocol's answer set (with ``edit`` applied if given) and count what the classifiers read.

    ``backend`` draws at ``protocol.image_size`` (its resolution is set to that for the run and restored
    after); ``on_batch(done, total)`` is called after each batch, ``on_images(images)`` with each batch's
    images (RGB in [0, 1]; the FID's features are taken there).
    """
    from contextlib import nullcontext

    from ..backend import apply_model_settings

    grid = protocol.grid()
    style_pred, object_pred = [], []
    apply_model_settings(backend, resolution=protocol.image_size)
    device = next(style_classifier.parameters()).device
    try:
        with edit.applied() if edit is not None else nullcontext():
            for start in range(0, len(grid), batch_size):
                chunk = grid[start : start + batch_size]
                prompts = [protocol.prompt(style, obj) for _, style, obj in chunk]
                images = backend.sample(prompts, [seed for seed, _, _ in chunk], protocol.steps, protocol.guidance)
                inputs = classifier_input(images, protocol.classifier_size).to(device)
                style_pred += style_classifier(inputs).argmax(-1).tolist()
                object_pred += object_classifier(inputs).argmax(-1).tolist()
                if on_images is not None:
                    on_images(images)
                if on_batch is not None:
                    on_batch(start + len(chunk), len(grid))
    finally:
        apply_model_settings(backend)
    return Accuracies.from_predictions(protocol, grid, style_pred, object_pred)


def target_name(protocol: Protocol, concept: str) -> str:
    """The protocol's class for an erased concept as prompts name it (``Van Gogh`` -> ``Van_Gogh``)."""
    key = concept.strip().replace(" ", "_").lower()
    for name in (*protocol.targets("style"), *protocol.objects):
        if name.lower() == key:
            return name
    raise ValueError(f"{concept!r} is not a style or object of the UnlearnCanvas protocol")


def _feature_collector(inception, stats):
    """``on_images`` for :func:`generate_and_classify`: adds each batch's Inception features to ``stats``."""
    if inception is None:
        return None
    return lambda images: stats.add(inception(images))


#: The protocol's public name.
UnlearnCanvasProtocol = Protocol


def evaluate_unlearncanvas(
    backend,
    runs: Sequence[tuple[object, str]],
    style_classifier_path,
    object_classifier_path,
    protocol: Protocol | None = None,
    batch_size: int = 8,
    on_batch=None,
    inception_path=None,
    fid_reference=None,
) -> dict:
    """Every unlearning run ``(edit, erased concept)`` scored as UnlearnCanvas does, and the averages per domain.

    The classifiers are the benchmark's two ViT-L/16 files converted to safetensors
    (``spare convert``); ``backend`` is the benchmark's fine-tuned model.

    With ``inception_path`` (the FID Inception-v3 as safetensors), each run also gets the FID of its
    answer set to ``fid_reference``: a folder of reference images (e.g. the benchmark's own images), or,
    when none is given, the unedited model's answer set on the same prompts and seeds (drawn once).
    """
    from .fid import FeatureStatistics, fid, load_inception, read_image_folder

    protocol = protocol or Protocol()
    style_clf = load_classifier(style_classifier_path, len(protocol.styles)).to(backend.device)
    object_clf = load_classifier(object_classifier_path, len(protocol.objects)).to(backend.device)
    inception = load_inception(inception_path).to(backend.device) if inception_path is not None else None
    reference = None
    if inception is not None:
        reference = FeatureStatistics()
        if fid_reference is not None:
            for images in read_image_folder(fid_reference):
                reference.add(inception(images.to(backend.device)))
        else:
            generate_and_classify(
                backend, protocol, style_clf, object_clf, None, batch_size, on_batch,
                on_images=_feature_collector(inception, reference),
            )  # fmt: skip
    scored = []
    for edit, concept in runs:
        target = target_name(protocol, concept)
        stats = FeatureStatistics() if inception is not None else None
        accuracies = generate_and_classify(
            backend, protocol, style_clf, object_clf, edit, batch_size, on_batch,
            on_images=_feature_collector(inception, stats),
        )  # fmt: skip
        scored.append(
            {**unlearning_scores(protocol, accuracies, target), "accuracies": {"style": accuracies.style,
                                                                               "object": accuracies.object}}
        )  # fmt: skip
        if stats is not None:
            scored[-1]["fid"] = round(fid(stats, reference), 3)
    averages = {}
    for domain in ("style", "object"):
        mine = [r for r in scored if r["domain"] == domain]
        if mine:
            averages[domain] = average_scores(mine)
    return {"protocol": {"styles": len(protocol.styles), "objects": len(protocol.objects),
                         "seeds": list(protocol.seeds), "steps": protocol.steps, "guidance": protocol.guidance,
                         "image_size": protocol.image_size,
                         "fid_reference": None if inception is None else str(fid_reference or "unedited model")},
            "runs": scored, "averages": averages}  # fmt: skip
