"""User-supplied forget/retain images: read, cropped, paired with prompts; bad folders explained."""

import pytest
import torch
from PIL import Image

from spare_core import ConceptPair, ErasureConfig, prepare_sets
from spare_core.cli import main
from spare_core.image_folder import load_image_folder

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def _banded(path, centre, edge, size=(60, 20)):
    """A wide image: ``centre`` colour in the middle square, ``edge`` colour on both sides."""
    image = Image.new("RGB", size, edge)
    left = (size[0] - size[1]) // 2
    image.paste(Image.new("RGB", (size[1], size[1]), centre), (left, 0))
    image.save(path)


def test_images_are_cropped_to_the_centre_in_name_order(tmp_path):
    _banded(tmp_path / "b.png", GREEN, RED)
    _banded(tmp_path / "a.png", BLUE, RED)
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_image_folder(tmp_path, 8)
    assert images.shape == (2, 3, 8, 8)
    assert images.min() >= -1 and images.max() <= 1
    # a.png first; only the centre square survives the crop, so no red is left.
    assert torch.allclose(images[0].mean((1, 2)), torch.tensor([-1.0, -1.0, 1.0]), atol=0.02)
    assert torch.allclose(images[1].mean((1, 2)), torch.tensor([-1.0, 1.0, -1.0]), atol=0.02)


@pytest.mark.parametrize(
    "setup, message, before_any_work",
    [
        (lambda d: d / "missing", "not found", True),
        (lambda d: (d / "notes.txt").write_text("x") and d, "holds no images", True),
        # Reading every image is the data stage's work, not the settings check's.
        (lambda d: (d / "broken.png").write_bytes(b"not a png") and d, "cannot read image", False),
    ],
)
def test_bad_folders_are_explained(tmp_path, setup, message, before_any_work):
    folder = setup(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_image_folder(folder, 8)
    if before_any_work:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            ErasureConfig(concepts=[ConceptPair("red", "plain")], forget_image_dir=str(folder)).validate()


def test_erase_refuses_a_missing_image_folder_without_writing(capsys, tmp_path):
    out = tmp_path / "out.safetensors"
    argv = ["erase", "--concept", "red", "--surrogate", "plain", "--out", str(out)]
    code = main(argv + ["--forget-image-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and "not found" in err and err.count("\n") == 1
    assert not out.exists()


def test_forget_images_from_a_folder_replace_generated_ones(toy_backend, tmp_path):
    backend = toy_backend
    # The size the model draws at is the size user images are brought to.
    assert backend.sample(["a circle image in red style"], [0], 2, 1.0).shape[-1] == backend.image_size
    colours = [RED, BLUE, GREEN, RED, BLUE]
    for k, colour in enumerate(colours):
        _banded(tmp_path / f"{k:02d}.png", colour, GREEN)
    config = ErasureConfig(
        concepts=[ConceptPair("red", "plain")],
        forget_image_dir=str(tmp_path),
        surrogate_images_per_prompt=0,
        retain_images=4,
        sample_steps=2,
    ).validate()
    sets = prepare_sets(backend, config)
    prompts, data = sets.prompts, sets.data
    expected = backend.encode_images(load_image_folder(tmp_path, backend.image_size)).float()
    assert torch.allclose(data.forget_latents, expected)
    assert data.forget_prompt_index.tolist() == [k % len(prompts.forget) for k in range(len(colours))]
    assert len(data.retain_latents) >= 4  # the retain set is still generated


def test_forget_images_given_as_a_batch_are_fitted_encoded_and_paired(toy_backend):
    from spare_core.images import fit_images

    wide = torch.linspace(-1, 1, 3 * 40 * 64).view(1, 3, 40, 64).repeat(3, 1, 1, 1)
    wide[1] *= -1
    config = ErasureConfig(
        concepts=[ConceptPair("red", "plain")], surrogate_images_per_prompt=0, retain_images=4, sample_steps=2
    ).validate()
    sets = prepare_sets(toy_backend, config, forget_images=wide)
    fitted = fit_images(wide, toy_backend.image_size)
    assert fitted.shape == (3, 3, 32, 32)
    assert torch.allclose(sets.data.forget_latents, toy_backend.encode_images(fitted).float())
    assert sets.data.forget_prompt_index.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="not both"):
        prepare_sets(toy_backend, config.with_settings(forget_image_dir="/x"), forget_images=wide)
