"""A tiny erasure of the toy style ``yellow``: a few images and steps, for tests of plumbing rather than quality."""

from spare_core import ConceptPair, ErasureConfig

#: Settings that make a whole erasure take a few seconds on a CPU.
TINY_SETTINGS = dict(
    images_per_prompt=1,
    surrogate_images_per_prompt=1,
    retain_images=8,
    sample_steps=2,
    steps=3,
    saliency_batches=1,
    profile_points=4,
)
#: The same settings as command-line options.
TINY_ARGV = [arg for name, value in TINY_SETTINGS.items() for arg in ("--" + name.replace("_", "-"), str(value))]


def tiny_config(concept: str = "yellow", surrogate: str = "plain", **overrides) -> ErasureConfig:
    """The tiny erasure of ``concept``, with some settings changed."""
    config = ErasureConfig(concepts=[ConceptPair(concept, surrogate)]).with_settings(**{**TINY_SETTINGS, **overrides})
    return config.validate()
