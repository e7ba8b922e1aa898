"""Prompt sets of an erasure: forget prompts, their surrogate twins, retain prompts.

The surrogate prompt is the forget prompt with the concept swapped for the
surrogate ("a cat in Van Gogh style" -> "a cat in plain style"), so the two
differ in the concept alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .config import ConceptPair, ErasureConfig
from .toy import world

#: Generic forget templates for real models (concept = a style, object or person).
GENERIC_TEMPLATES = (
    "{concept}",
    "an image of {concept}",
    "a painting in the style of {concept}",
    "a photo of {concept}",
    "a detailed picture of {concept}",
)
#: Default retain prompts for real models: varied subjects and styles that an
#: erasure should leave unchanged.
GENERIC_RETAIN_PROMPTS = (
    "a photo of a dog on a beach",
    "a portrait of a woman, oil painting",
    "a city street at night, photograph",
    "a bowl of fruit on a table, still life",
    "a mountain landscape at sunrise",
    "a watercolor painting of a bird",
    "a red sports car in front of a house",
    "a cup of coffee on a wooden desk",
    "a painting in the style of Claude Monet",
    "a sketch of a cat",
    "an astronaut riding a horse",
    "a castle on a hill, fantasy art",
)


@dataclass
class PromptSet:
    """Forget prompts (one list per concept, flattened), their surrogate twins and retain prompts."""

    forget: list[str]
    surrogate: list[str]
    concept_of: list[int]  # index into config.concepts for each forget prompt
    retain: list[str]


def swap_concept(prompt: str, concept: str, surrogate: str) -> str:
    """``prompt`` with every whole-word occurrence of ``concept`` replaced by ``surrogate``."""
    pattern = re.compile(rf"(?<!\w){re.escape(concept)}(?!\w)", re.IGNORECASE)
    if not pattern.search(prompt):
        raise ValueError(f"forget prompt {prompt!r} does not contain the concept {concept!r}")
    return pattern.sub(surrogate, prompt)


def _toy_domain(concept: str) -> str | None:
    if concept in world.STYLES:
        return "style"
    if concept in world.OBJECTS:
        return "object"
    return None


def toy_forget_prompts(concept: str) -> list[str]:
    """Training prompts naming a toy concept (the evaluation template excluded)."""
    domain = _toy_domain(concept)
    templates = [t for t in world.FULL_TEMPLATES if t != world.EVAL_TEMPLATE]
    if domain == "style":
        prompts = [t.format(object=o, style=concept) for t in templates for o in world.OBJECTS]
        return prompts + [t.format(style=concept) for t in world.STYLE_TEMPLATES]
    if domain == "object":
        styles = [s for s in world.STYLES if s != world.PLAIN_STYLE]
        prompts = [t.format(object=concept, style=s) for t in templates for s in styles]
        return prompts + [t.format(object=concept) for t in world.OBJECT_TEMPLATES]
    raise ValueError(
        f"{concept!r} is not a toy concept; toy objects: {', '.join(world.OBJECTS)}; "
        f"toy styles: {', '.join(world.STYLES)}"
    )


def toy_retain_prompts(concepts: Sequence[str]) -> list[str]:
    """Every object/style combination that names none of the erased concepts (first training template)."""
    template = world.FULL_TEMPLATES[0]
    return [
        template.format(object=o, style=s)
        for o in world.OBJECTS
        for s in world.STYLES
        if s != world.PLAIN_STYLE and o not in concepts and s not in concepts
    ]


def build_prompt_set(config: ErasureConfig, toy: bool) -> PromptSet:
    """The prompt set of ``config``: the user's prompts where given, else the automatic defaults."""
    forget, surrogate, concept_of = [], [], []
    for i, pair in enumerate(config.concepts):
        prompts = _forget_prompts_for(pair, config, toy)
        for prompt in prompts:
            forget.append(prompt)
            surrogate.append(swap_concept(prompt, pair.concept, pair.surrogate))
            concept_of.append(i)
    if not forget:
        raise ValueError("no forget prompt contains any of the concepts; each needs at least one")
    if config.retain_prompts:
        retain = list(config.retain_prompts)
    elif toy:
        retain = toy_retain_prompts([p.concept for p in config.concepts])
    else:
        retain = list(GENERIC_RETAIN_PROMPTS)
    return PromptSet(forget, surrogate, concept_of, retain)


def _forget_prompts_for(pair: ConceptPair, config: ErasureConfig, toy: bool) -> list[str]:
    if config.forget_prompts:
        pattern = re.compile(rf"(?<!\w){re.escape(pair.concept)}(?!\w)", re.IGNORECASE)
        return [p for p in config.forget_prompts if pattern.search(p)]
    if toy:
        return toy_forget_prompts(pair.concept)
    return [t.format(concept=pair.concept) for t in GENERIC_TEMPLATES]
