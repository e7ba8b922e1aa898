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


def _tiny_classifier(path, classes: int, seed: int):
    from safetensors.torch import save_file

    from spare_core.evaluation.vit import ViTClassifier, ViTConfig

    torch.manual_seed(seed)
    model = ViTClassifier(ViTConfig(image_size=16, patch_size=8, dim=32, depth=1, heads=2, mlp_dim=64,
                                    num_classes=classes))  # fmt: skip
    with torch.no_grad():
        model.head.weight.normal_(0, 5.0)  # spread the predictions over the classes
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval()


def test_the_protocol_runs_end_to_end_in_miniature_on_the_toy_model(toy_backend, tmp_path):
    from spare_core import WeightDelta, evaluate_unlearncanvas

    mini = Protocol(styles=("Van_Gogh", "Seed_Images", "Monet"), objects=("Cats", "Dogs"), seeds=(1, 2), steps=3,
                    guidance=3.0, image_size=32, classifier_size=16)  # fmt: skip
    style_clf = _tiny_classifier(tmp_path / "style.safetensors", 3, 0)
    object_clf = _tiny_classifier(tmp_path / "object.safetensors", 2, 1)
    unchanged = WeightDelta(toy_backend.denoiser(), ["conv_in"])
    result = evaluate_unlearncanvas(
        toy_backend, [(unchanged, "van gogh"), (unchanged, "Dogs")],
        tmp_path / "style.safetensors", tmp_path / "object.safetensors", mini,
    )  # fmt: skip
    style_run, object_run = result["runs"]
    assert style_run["target"] == "Van_Gogh" and object_run["target"] == "Dogs"

    # The same answer set drawn and classified by hand.
    grid = mini.grid()
    images = toy_backend.sample([mini.prompt(s, o) for _, s, o in grid], [seed for seed, _, _ in grid], 3, 3.0)
    with torch.no_grad():
        inputs = classifier_input(images, 16)
        by_hand = Accuracies.from_predictions(
            mini, grid, style_clf(inputs).argmax(-1).tolist(), object_clf(inputs).argmax(-1).tolist()
        )
    assert style_run["accuracies"]["style"] == by_hand.style
    assert style_run == {**unlearning_scores(mini, by_hand, "Van_Gogh"), "accuracies": style_run["accuracies"]}
    assert style_run["ua"]["n"] == 2 * 2  # two objects x two seeds
    assert result["averages"]["style"]["runs"] == 1 and result["averages"]["object"]["runs"] == 1
    assert result["protocol"]["image_size"] == 32
    with pytest.raises(ValueError, match="neither|not a style or object"):
        evaluate_unlearncanvas(toy_backend, [(unchanged, "Seed Images")], tmp_path / "style.safetensors",
                               tmp_path / "object.safetensors", mini)  # fmt: skip
    with pytest.raises(ValueError, match="has 3 classes"):
        evaluate_unlearncanvas(toy_backend, [(unchanged, "Dogs")], tmp_path / "style.safetensors",
                               tmp_path / "style.safetensors", mini)  # fmt: skip


def test_spare_eval_unlearncanvas_asks_for_the_model_and_the_classifiers(tmp_path, capsys):
    from spare_core.cli import main

    edit = tmp_path / "edit.safetensors"
    edit.write_bytes(b"")
    assert main(["eval", "--protocol", "unlearncanvas", str(edit)]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["eval", "--protocol", "unlearncanvas", "--model", str(edit), str(edit)]) == 2
    assert "--style-classifier" in capsys.readouterr().err
