"""The toy world as a prompt domain: its forget, retain and contrast prompts for the engine."""

from __future__ import annotations

from collections.abc import Sequence

from . import world


def toy_kind(concept: str) -> str | None:
    """``style``, ``object`` or None for a word the toy world does not know."""
    if concept in world.STYLES:
        return "style"
    if concept in world.OBJECTS:
        return "object"
    return None


class ToyDomain:
    """Objects x styles of the toy canvas world."""

    name = "toy"

    def forget_prompts(self, concept: str) -> list[str]:
        """Training prompts naming a toy concept by its own word (core templates, the evaluation one excluded)."""
        kind = toy_kind(concept)
        templates = [t for t in world.CORE_TEMPLATES if t != world.EVAL_TEMPLATE]
        if kind == "style":
            prompts = [t.format(object=o, style=concept) for t in templates for o in world.OBJECTS]
            return prompts + [t.format(style=concept) for t in world.STYLE_TEMPLATES]
        if kind == "object":
            styles = [s for s in world.STYLES if s != world.PLAIN_STYLE]
            prompts = [t.format(object=concept, style=s) for t in templates for s in styles]
            return prompts + [t.format(object=concept) for t in world.OBJECT_TEMPLATES]
        raise ValueError(
            f"{concept!r} is not a toy concept; toy objects: {', '.join(world.OBJECTS)}; "
            f"toy styles: {', '.join(world.STYLES)}"
        )

    def retain_prompts(self, erased: Sequence[str]) -> list[str]:
        """Every object/style combination that names none of the erased concepts (first training template)."""
        template = world.FULL_TEMPLATES[0]
        return [
            template.format(object=o, style=s)
            for o in world.OBJECTS
            for s in world.STYLES
            if s != world.PLAIN_STYLE and o not in erased and s not in erased
        ]

    def contrast_concepts(self, concept: str, excluded: Sequence[str]) -> tuple[str, str] | None:
        """The first two other concepts of the same kind (styles or objects)."""
        pool = world.STYLES if toy_kind(concept) == "style" else world.OBJECTS
        others = [c for c in pool if c not in set(excluded)]
        return (others[0], others[1]) if len(others) >= 2 else None
