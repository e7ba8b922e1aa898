"""Prompt domains: where an erasure's default prompts come from.

A domain supplies, for the concepts being erased, the prompts that name them
(the forget set), the prompts that must not change (the retain set), and two
other concepts of the same kind for the timestep profile's contrast. The
model's backend may bring its own domain (the toy world does); real models
get :class:`GenericDomain`; a caller may pass any object with these methods.
The engine never knows a domain by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

#: Forget templates for real models (the concept is a style, object or person).
GENERIC_TEMPLATES = (
    "{concept}",
    "an image of {concept}",
    "a painting in the style of {concept}",
    "a photo of {concept}",
    "a detailed picture of {concept}",
)
#: Retain prompts for real models: varied subjects and styles an erasure should leave unchanged.
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
#: Two everyday subjects swapped into the first forget prompt for the profile's contrast on real models.
GENERIC_CONTRAST_CONCEPTS = ("a dog", "a house")


@runtime_checkable
class Domain(Protocol):
    """Default prompts for erasing concepts of one prompt world."""

    name: str

    def forget_prompts(self, concept: str) -> list[str]:
        """Prompts that name ``concept`` (each containing its word); ValueError if the domain does not know it."""
        ...

    def retain_prompts(self, erased: Sequence[str]) -> list[str]:
        """Prompts that must not change when ``erased`` are erased."""
        ...

    def contrast_concepts(self, concept: str, excluded: Sequence[str]) -> tuple[str, str] | None:
        """Two other concepts of ``concept``'s kind (none of ``excluded``), or None if there are not two."""
        ...


class GenericDomain:
    """Defaults for real models: generic templates, varied retain prompts, everyday contrast subjects."""

    name = "generic"

    def forget_prompts(self, concept: str) -> list[str]:
        return [t.format(concept=concept) for t in GENERIC_TEMPLATES]

    def retain_prompts(self, erased: Sequence[str]) -> list[str]:
        lowered = [c.lower() for c in erased]
        return [p for p in GENERIC_RETAIN_PROMPTS if not any(c in p.lower() for c in lowered)]

    def contrast_concepts(self, concept: str, excluded: Sequence[str]) -> tuple[str, str] | None:
        others = [c for c in GENERIC_CONTRAST_CONCEPTS if c.lower() not in {e.lower() for e in excluded}]
        return (others[0], others[1]) if len(others) >= 2 else None
