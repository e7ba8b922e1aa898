"""The shipped toy model and classifiers: offline loading and real quality checks."""

import torch

from spare_core.sampling import generate
from spare_core.toy.classifier import to_greyscale
from spare_core.toy.evaluate import generate_grid
from spare_core.toy.world import OBJECTS, STYLES, degrade, labelled_set


def test_pipeline_loads_offline_and_generates_images(no_network):
    from spare_core.toy.pipeline import load_toy_pipeline

    pipe = load_toy_pipeline()
    images = generate(pipe, ["a circle image in red style"] * 2 + ["a star"] * 2, seeds=[1, 2, 3, 4], steps=4)
    assert images.shape == (4, 3, 32, 32)
    assert images.min() >= -1 and images.max() <= 1
    assert torch.isfinite(images).all()
    # Different seeds give different images.
    assert (images[0] - images[1]).abs().mean() > 0.01


def test_same_seed_same_image_whatever_the_batch(toy_pipe):
    a = generate(toy_pipe, ["a ring image in blue style"], seeds=[11], steps=4)
    b = generate(toy_pipe, ["a square", "a ring image in blue style"], seeds=[3, 11], steps=4)
    assert torch.allclose(a[0], b[1], atol=1e-5)


def test_shipped_classifiers_are_accurate_on_fresh_images(toy_classifiers, grey_style_classifier):
    object_clf, style_clf = toy_classifiers
    images, obj, sty = labelled_set(4, seed=123_456)  # 168 images never seen in training
    degraded = degrade(images, torch.Generator().manual_seed(0), blur_sigma=1.0, noise_std=0.1)
    for clf, labels in ((object_clf, obj), (style_clf, sty), (grey_style_clf := grey_style_classifier, sty)):
        assert (clf.predict(images) == labels).float().mean() >= 0.98
        assert (clf.predict(degraded) == labels).float().mean() >= 0.95
    # The greyscale classifier sees no colour: a grey image of the same luminance reads the same.
    grey = to_greyscale(images).expand(-1, 3, -1, -1)
    assert torch.allclose(grey_style_clf(images), grey_style_clf(grey), atol=1e-5)


def test_generations_are_recognised(toy_backend, toy_classifiers, grey_style_classifier):
    # Every object x style prompt once: 42 generations.
    result = generate_grid(toy_backend, *toy_classifiers, seeds=[2024])
    assert len(result.images) == len(OBJECTS) * len(STYLES) >= 24
    assert result.object_accuracy >= 0.8, result.accuracy_by("object")
    assert result.style_accuracy >= 0.8, result.accuracy_by("style")
    # The model draws the textures themselves, not only their colours.
    grey_accuracy = (grey_style_classifier.predict(result.images) == result.style_labels).float().mean()
    assert grey_accuracy >= 0.8


def test_toy_grid_command_reports_every_classifier(tmp_path, capsys):
    import json

    from spare_core.cli import main

    assert main(["toy-grid", "--out", str(tmp_path), "--steps", "4"]) == 0
    report = json.loads((tmp_path / "toy_grid.json").read_text())
    assert report["generations"] == len(OBJECTS) * len(STYLES)
    for key in ("object_accuracy", "style_accuracy", "grey_style_accuracy"):
        assert 0.0 <= report[key] <= 1.0
    assert "greyscale style classifier" in capsys.readouterr().out
    assert (tmp_path / "toy_grid.png").stat().st_size > 0
