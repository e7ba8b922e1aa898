"""The UnlearnCanvas protocol: the published grid and settings, and its metrics on a known confusion matrix."""

import pytest
import torch

from spare_core.evaluation.unlearncanvas import (
    OBJECTS,
    STYLES,
    Accuracies,
    Protocol,
    average_scores,
    classifier_input,
    unlearning_scores,
)

MINI = Protocol(styles=("Ink", "Pop_Art", "Seed_Images", "Rust"), objects=("Cats", "Dogs"), seeds=(1, 2))


def test_the_published_protocol():
    protocol = Protocol()
    assert len(STYLES) == 51 and STYLES.index("Seed_Images") == 38
    assert len(OBJECTS) == 20 and OBJECTS[0] == "Architectures" and OBJECTS[-1] == "Waterfalls"
    assert len(protocol.grid()) == 51 * 20 * 5
    assert protocol.prompt("Van_Gogh", "Dogs") == "A Dogs image in Van Gogh style."
    assert (protocol.steps, protocol.guidance, protocol.image_size, protocol.seeds) == (
        100,
        9.0,
        512,
        (188, 288, 588, 688, 888),
    )
    assert len(protocol.targets("style")) == 50 and "Seed_Images" not in protocol.targets("style")
    with pytest.raises(ValueError, match="domain"):
        protocol.targets("colour")


def _predictions(rule):
    grid = MINI.grid()
    style_pred, object_pred = zip(*(rule(s, o) for _, s, o in grid), strict=True)
    return Accuracies.from_predictions(MINI, grid, style_pred, object_pred)


def test_style_unlearning_scores_on_a_known_confusion_matrix():
    # Erased "Ink": its prompts read as the photo style. "Rust" is right for Cats only (half its prompts);
    # the object classifier misses Dogs in Ink style.
    def rule(style, obj):
        if style == "Ink":
            predicted_style = "Seed_Images"
        elif style == "Rust" and obj == "Dogs":
            predicted_style = "Pop_Art"
        else:
            predicted_style = style
        predicted_object = "Cats" if (style, obj) == ("Ink", "Dogs") else obj
        return MINI.styles.index(predicted_style), MINI.objects.index(predicted_object)

    accuracies = _predictions(rule)
    assert accuracies.style == {"Ink": (0, 4), "Pop_Art": (4, 4), "Seed_Images": (4, 4), "Rust": (2, 4)}
    assert accuracies.object == {"Cats": (8, 8), "Dogs": (6, 8)}
    scores = unlearning_scores(MINI, accuracies, "Ink")
    assert scores["domain"] == "style"
    assert (scores["ua"]["k"], scores["ua"]["n"], scores["ua"]["value"]) == (4, 4, 1.0)
    # IRA: the other styles without Seed_Images: (4/4 + 2/4) / 2 = 0.75.
    assert (scores["ira"]["k"], scores["ira"]["n"], scores["ira"]["value"]) == (6, 8, 0.75)
    # CRA: every object over every style, Seed_Images and the target included: (8/8 + 6/8) / 2.
    assert (scores["cra"]["k"], scores["cra"]["n"], scores["cra"]["value"]) == (14, 16, 0.875)
    assert scores["ira"]["ci_low"] < 0.75 < scores["ira"]["ci_high"]


def test_object_unlearning_scores_and_the_average_over_runs():
    def rule(style, obj):
        return MINI.styles.index(style), MINI.objects.index("Cats")  # every object reads as Cats

    accuracies = _predictions(rule)
    dogs = unlearning_scores(MINI, accuracies, "Dogs")
    assert dogs["domain"] == "object"
    assert dogs["ua"]["value"] == 1.0 and dogs["ira"]["value"] == 1.0  # Cats, the only other object, stays right
    assert (dogs["cra"]["k"], dogs["cra"]["n"]) == (12, 12)  # styles without Seed_Images: 3 x 4 generations
    cats = unlearning_scores(MINI, accuracies, "Cats")
    assert cats["ua"]["value"] == 0.0 and cats["ira"]["value"] == 0.0
    mean = average_scores([dogs, cats])
    assert mean["runs"] == 2 and mean["ua"]["value"] == 0.5 and mean["ira"]["value"] == 0.5
    with pytest.raises(ValueError, match="separately"):
        average_scores([dogs, unlearning_scores(MINI, accuracies, "Ink")])
    with pytest.raises(ValueError, match="neither a style nor an object"):
        unlearning_scores(MINI, accuracies, "Seed_Images")


def test_classifier_input_resizes_and_keeps_the_range():
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    resized = classifier_input(images, size=32)
    assert resized.shape == (2, 3, 32, 32)
    assert resized.min() >= -1 and resized.max() <= 1
    flat = torch.full((1, 3, 64, 64), 0.25)
    assert torch.allclose(classifier_input(flat, 32), torch.full((1, 3, 32, 32), 0.25))
