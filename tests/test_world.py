"""The synthetic world: deterministic rendering and captions that parse back."""

import pytest
import torch

from spare_core.toy.world import (
    EVAL_TEMPLATE,
    FULL_TEMPLATES,
    HELD_OUT_TEMPLATE,
    OBJECT_TEMPLATES,
    OBJECTS,
    PLAIN_STYLE,
    STYLE_TEMPLATES,
    STYLES,
    degrade,
    labelled_set,
    parse_caption,
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
    from spare_core.toy.world import render

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
