"""Prompt sets of an erasure: forget prompts, their surrogate twins, retain prompts.

The surrogate prompt is the forget prompt with the concept swapped for the
surrogate ("a cat in Van Gogh style" -> "a cat in plain style"), so the two
differ in the concept alone. Default prompts come from a :class:`~.domain.Domain`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from .config import ConceptPair, ErasureConfig
from .domain import Domain


@dataclass
class PromptSet:
    """Forget prompts (one list per concept, flattened), their surrogate twins and retain prompts."""

    forget: list[str]
    surrogate: list[str]
    concept_of: list[int]  # index into config.concepts for each forget prompt
    retain: list[str]
    contrast: tuple[str, str] | None = None  # the profile's contrast prompts, when the domain has them

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptSet:
        contrast = data.get("contrast")
        return cls(
            forget=list(data["forget"]),
            surrogate=list(data["surrogate"]),
            concept_of=[int(i) for i in data["concept_of"]],
            retain=list(data["retain"]),
            contrast=tuple(contrast) if contrast else None,
        )


def _word(concept: str) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(concept)}(?!\w)", re.IGNORECASE)


def swap_concept(prompt: str, concept: str, surrogate: str) -> str:
    """``prompt`` with every whole-word occurrence of ``concept`` replaced by ``surrogate``."""
    pattern = _word(concept)
    if not pattern.search(prompt):
        raise ValueError(f"forget prompt {prompt!r} does not contain the concept {concept!r}")
    return pattern.sub(surrogate, prompt)


def build_prompt_set(config: ErasureConfig, domain: Domain) -> PromptSet:
    """The prompt set of ``config``: the user's prompts where given, else ``domain``'s defaults."""
    forget, surrogate, concept_of = [], [], []
    for i, pair in enumerate(config.concepts):
        for prompt in _forget_prompts_for(pair, config, domain):
            forget.append(prompt)
            surrogate.append(swap_concept(prompt, pair.concept, pair.surrogate))
            concept_of.append(i)
    if not forget:
        raise ValueError("no forget prompt contains any of the concepts; each needs at least one")
    erased = [p.concept for p in config.concepts]
    retain = list(config.retain_prompts) or domain.retain_prompts(erased)
    if not retain:
        raise ValueError("no retain prompt left: give some with retain_prompts")
    return PromptSet(forget, surrogate, concept_of, retain, _contrast(config, forget[0], domain))


def _forget_prompts_for(pair: ConceptPair, config: ErasureConfig, domain: Domain) -> list[str]:
    if config.forget_prompts:
        mine = [p for p in config.forget_prompts if _word(pair.concept).search(p)]
        if not mine:
            raise ValueError(f"none of the forget prompts contains the concept {pair.concept!r}; add one that does")
        return mine
    return domain.forget_prompts(pair.concept)


def _contrast(config: ErasureConfig, first_forget: str, domain: Domain) -> tuple[str, str] | None:
    """The first forget prompt with its concept swapped for two other concepts of the domain."""
    if not config.profile_contrast:
        return None
    first = config.concepts[0].concept
    excluded = [p.concept for p in config.concepts] + [p.surrogate for p in config.concepts]
    others = domain.contrast_concepts(first, excluded)
    if others is None:
        return None
    return swap_concept(first_forget, first, others[0]), swap_concept(first_forget, first, others[1])
