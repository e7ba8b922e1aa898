"""The synthetic world: deterministic rendering and captions that parse back."""

import pytest
import torch

from spare_core.toy.classifier import to_greyscale
from spare_core.toy.world import (
    ALTERNATIVE_NAME_RATE,
    ALTERNATIVE_NAMES,
    BENCHMARK_CONCEPTS,
    EVAL_TEMPLATE,
    FULL_TEMPLATES,
    HELD_OUT_TEMPLATE,
    OBJECT_TEMPLATES,
    OBJECTS,
    PLAIN_STYLE,
    STYLE_TEMPLATES,
    STYLES,
    VOCABULARY,
    benchmark_surrogate,
    concepts_named,
    degrade,
    labelled_set,
    names_of,
    parse_caption,
    render,
    sample_batch,
)


def test_world_size_and_surrogate_style():
    assert len(OBJECTS) >= 6
    assert len([s for s in STYLES if s != PLAIN_STYLE]) >= 6
    assert PLAIN_STYLE in STYLES


def test_same_seed_same_batch_and_other_seed_differs():
    a_img, a_cap = sample_batch(32, torch.Generator().manual_seed(7))
    b_img, b_cap = sample_batch(32, torch.Generator().manual_seed(7))
    c_img, c_cap = sample_batch(32, torch.Generator().manual_seed(8))
    assert torch.equal(a_img, b_img)
    assert a_cap == b_cap
    assert not torch.equal(a_img, c_img)


def test_images_have_the_right_shape_and_range():
    images, obj, sty = labelled_set(1, seed=0)
    assert images.shape == (len(OBJECTS) * len(STYLES), 3, 32, 32)
    assert images.min() >= -1 and images.max() <= 1
    # The shape covers part of the canvas, never all or none of it.
    background = images[:, :, 0, 0].unsqueeze(-1).unsqueeze(-1)
    covered = ((images - background).abs().amax(1) > 0.2).float().mean(dim=(1, 2))
    assert (covered > 0.08).all() and (covered < 0.8).all()


def test_jitter_varies_position_size_and_background():
    gen = torch.Generator().manual_seed(3)
    images = render(torch.zeros(16, dtype=torch.long), torch.zeros(16, dtype=torch.long), gen)
    # Same object and style, yet no two images are identical.
    flat = images.flatten(1)
    distances = torch.cdist(flat, flat) + torch.eye(16) * 1e9
    assert distances.min() > 0.5


def test_every_caption_parses_back_to_what_the_image_shows():
    images, samples = sample_batch(2000, torch.Generator().manual_seed(1))
    kinds = {"empty": 0, "full": 0, "object": 0, "style": 0}
    for s in samples:
        obj, style = parse_caption(s.caption)
        assert obj in (None, s.object)
        assert style in (None, s.style)
        if obj and style:
            kinds["full"] += 1
        elif obj:
            kinds["object"] += 1
        elif style:
            kinds["style"] += 1
        else:
            assert s.caption == ""
            kinds["empty"] += 1
    # Every caption kind occurs; empty captions are about 10 %.
    assert all(n > 0 for n in kinds.values())
    assert 0.07 < kinds["empty"] / len(samples) < 0.13


@pytest.mark.parametrize("template", FULL_TEMPLATES + (EVAL_TEMPLATE, HELD_OUT_TEMPLATE))
def test_templates_parse_for_every_pair(template):
    for obj in OBJECTS:
        for style in STYLES:
            assert parse_caption(template.format(object=obj, style=style)) == (obj, style)


def test_single_attribute_templates_parse():
    for t in OBJECT_TEMPLATES:
        assert parse_caption(t.format(object="star")) == ("star", None)
    for t in STYLE_TEMPLATES:
        assert parse_caption(t.format(style="dots")) == (None, "dots")


def test_held_out_template_is_never_used_in_training():
    images, samples = sample_batch(3000, torch.Generator().manual_seed(2))
    held_out = {HELD_OUT_TEMPLATE.format(object=o, style=s) for o in OBJECTS for s in STYLES}
    assert not held_out & {s.caption for s in samples}
    assert HELD_OUT_TEMPLATE not in FULL_TEMPLATES


def test_caption_with_two_objects_is_rejected():
    with pytest.raises(ValueError, match="more than one"):
        parse_caption("a circle and a square in red style")


def test_degrade_blurs_and_adds_noise():
    images, _, _ = labelled_set(1, seed=0)
    gen = torch.Generator().manual_seed(0)
    blurred = degrade(images, gen, blur_sigma=1.0, noise_std=0.0)

    # Blur lowers the energy of pixel-to-pixel differences.
    def tv(x):
        return (x[..., 1:] - x[..., :-1]).abs().mean()

    assert tv(blurred) < 0.8 * tv(images)
    noisy = degrade(images, gen, blur_sigma=0.0, noise_std=0.1)
    assert abs(float((noisy - images).std()) - 0.1) < 0.01


# --------------------------------------------------------------------------- names


def test_every_concept_has_another_name_that_names_nothing_else():
    all_names = [name for c in OBJECTS + STYLES for name in names_of(c)]
    assert len(all_names) == len(set(all_names)), "a name is shared by two concepts"
    for concept in OBJECTS + STYLES:
        assert ALTERNATIVE_NAMES[concept], concept
        for name in ALTERNATIVE_NAMES[concept]:
            assert concept not in name.split(), f"{name!r} uses the word {concept!r}"
            assert set(name.split()) <= set(VOCABULARY)
    phrasings = [n for names in ALTERNATIVE_NAMES.values() for n in names if " " in n]
    assert len(phrasings) >= 4


@pytest.mark.parametrize("template", FULL_TEMPLATES + (EVAL_TEMPLATE, HELD_OUT_TEMPLATE))
def test_templates_parse_with_every_name(template):
    for obj in OBJECTS:
        for style in STYLES:
            for obj_name in names_of(obj):
                for style_name in names_of(style):
                    caption = template.format(object=obj_name, style=style_name)
                    assert parse_caption(caption) == (obj, style), caption


def test_the_longest_name_wins():
    # "plus" names cross, and so does "plus sign"; neither leaves a stray word behind.
    assert concepts_named("a plus sign in polka dot style") == ["cross", "dots"]
    assert concepts_named("a plus in dots style") == ["cross", "dots"]
    assert concepts_named("a five pointed shape") == ["star"]
    assert concepts_named("a shape") == []


def test_captions_use_alternative_names_at_the_fixed_rate():
    _, samples = sample_batch(4000, torch.Generator().manual_seed(4))
    mentions = alternative = 0
    used = set()
    for s in samples:
        named = concepts_named(s.caption)
        for concept in named:
            mentions += 1
            own_word = concept in s.caption.split()
            alternative += not own_word
        used |= {name for c in named for name in ALTERNATIVE_NAMES[c] if f" {name} " in f" {s.caption} "}
    # 4000 captions give about 5000 mentions: the share's standard error is about 0.6 points.
    assert abs(alternative / mentions - ALTERNATIVE_NAME_RATE) < 0.025
    every_name = {n for names in ALTERNATIVE_NAMES.values() for n in names}
    assert used == every_name


# --------------------------------------------------------------------------- styles beyond colour


def _shape_mask(objects: torch.Tensor, seed: int) -> torch.Tensor:
    """Where each image's shape lies, [N, H, W] bool: the same draw in solid red (rendering draws the
    geometry from the generator before the style, so the same seed places the same shapes)."""
    red = render(objects, torch.full_like(objects, STYLES.index("red")), torch.Generator().manual_seed(seed))
    return (red - red[:, :, :1, :1]).abs().amax(1) > 0.5


def test_stripes_and_checker_share_a_palette_and_differ_in_pattern():
    n = 32
    objects = torch.full((n,), OBJECTS.index("square"))
    stripes = render(objects, torch.full((n,), STYLES.index("stripes")), torch.Generator().manual_seed(5))
    checker = render(objects, torch.full((n,), STYLES.index("checker")), torch.Generator().manual_seed(5))

    inside = _shape_mask(objects, 5).unsqueeze(1)

    def mean_colour(images):
        return (images * inside).sum(dim=(0, 2, 3)) / inside.sum()

    # Same colours on average (both textures cover half the shape with each colour) ...
    assert (mean_colour(stripes) - mean_colour(checker)).abs().max() < 0.08

    # ... but different patterns: stripes change only from row to row, checker cells also
    # alternate along each row.
    def change_along_rows(images):
        grey = to_greyscale(images)[:, 0]
        return (grey[:, :, 1:] - grey[:, :, :-1]).abs().mean()

    def change_along_columns(images):
        grey = to_greyscale(images)[:, 0]
        return (grey[:, 1:, :] - grey[:, :-1, :]).abs().mean()

    assert change_along_rows(stripes) < 0.6 * change_along_columns(stripes)
    assert change_along_rows(checker) > 0.8 * change_along_columns(checker)


def test_solid_styles_differ_in_brightness_not_only_in_hue():
    n = 16
    objects = torch.full((n,), OBJECTS.index("circle"))
    means = {}
    for style in ("red", "blue", "yellow"):
        images = render(objects, torch.full((n,), STYLES.index(style)), torch.Generator().manual_seed(6))
        grey = to_greyscale(images)[:, 0]
        inside = _shape_mask(objects, 6)
        means[style] = float(grey[inside].mean())
    ordered = sorted(means.values())
    assert min(b - a for a, b in zip(ordered, ordered[1:], strict=False)) > 0.3  # [-1, 1] units


def test_plain_is_an_outline_drawing():
    objects = torch.full((16,), OBJECTS.index("square"))
    images = render(objects, torch.full_like(objects, STYLES.index(PLAIN_STYLE)), torch.Generator().manual_seed(7))
    grey = to_greyscale(images)[:, 0]
    inside = _shape_mask(objects, 7)
    # Dark pixels (the outline) and pale ones (the fill) both occur inside the shape.
    dark = (grey < -0.3) & inside
    pale = (grey > 0.4) & inside
    assert (dark.flatten(1).sum(1) > 20).all()
    assert (pale.flatten(1).sum(1) > 20).all()


def test_the_benchmarks_erase_styles_to_plain_and_each_object_to_another_object_once():
    styles = [c for c in BENCHMARK_CONCEPTS if c in STYLES]
    objects = [c for c in BENCHMARK_CONCEPTS if c in OBJECTS]
    assert PLAIN_STYLE not in BENCHMARK_CONCEPTS and len(styles) == len(STYLES) - 1 and objects == list(OBJECTS)
    assert BENCHMARK_CONCEPTS.index(objects[0]) == len(styles)  # styles first
    assert {benchmark_surrogate(s) for s in styles} == {PLAIN_STYLE}
    surrogates = [benchmark_surrogate(o) for o in objects]
    assert sorted(surrogates) == sorted(objects) and all(s != o for s, o in zip(surrogates, objects, strict=True))
    assert benchmark_surrogate("cross") == "ring" and benchmark_surrogate("star") == "circle"
    with pytest.raises(ValueError, match="unknown toy concept 'plain'"):
        benchmark_surrogate(PLAIN_STYLE)
