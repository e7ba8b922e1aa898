"""The toy model's training command: resumable and writing a loadable model."""

import json

import torch
from safetensors.torch import load_file

from spare_core.toy.train import Trainer, main


def _trainer(steps: int) -> Trainer:
    return Trainer(seed=5, steps=steps, batch_size=2, lr=1e-3, ema_decay=0.99, min_snr_gamma=5.0)


def test_resumed_training_equals_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    straight = _trainer(4)
    for _ in range(4):
        straight.train_step()

    first = _trainer(4)
    for _ in range(2):
        first.train_step()
    from spare_core.fileio import save_safetensors

    save_safetensors(first.state_tensors(), tmp_path / "state.safetensors")
    resumed = _trainer(4)
    resumed.load_state_tensors(load_file(tmp_path / "state.safetensors"))
    assert resumed.step == 2
    for _ in range(2):
        resumed.train_step()

    for name in ("unet", "text_encoder"):
        for key, value in straight.modules[name].state_dict().items():
            assert torch.equal(value, resumed.modules[name].state_dict()[key]), key
            assert torch.equal(straight.ema[name][key], resumed.ema[name][key]), key
    # And training did move the weights.
    fresh = _trainer(4)
    moved = [
        not torch.equal(v, fresh.modules["unet"].state_dict()[k])
        for k, v in straight.modules["unet"].state_dict().items()
    ]
    assert any(moved)


def test_training_command_writes_a_model_the_loader_accepts(tmp_path):
    from spare_core.toy.pipeline import load_grey_style_classifier, load_toy_classifiers, load_toy_pipeline

    main(
        [
            "--out",
            str(tmp_path),
            "--steps",
            "2",
            "--classifier-steps",
            "1",
            "--batch-size",
            "2",
            "--checkpoint-every",
            "1",
        ]
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["training"]["steps"] == 2
    assert set(manifest["files"]) == {
        "unet.safetensors",
        "text_encoder.safetensors",
        "object_classifier.safetensors",
        "style_classifier.safetensors",
        "grey_style_classifier.safetensors",
    }
    assert (tmp_path / "checkpoint" / "train_state.safetensors").exists()
    pipe = load_toy_pipeline(tmp_path)
    ema = load_file(tmp_path / "unet.safetensors")
    assert torch.equal(pipe.unet.state_dict()["conv_in.weight"], ema["conv_in.weight"])
    load_toy_classifiers(tmp_path)
    assert load_grey_style_classifier(tmp_path).greyscale
    assert [(r["from_step"], r["to_step"]) for r in manifest["training"]["runs"]] == [(0, 2)]

    # Resumed with more steps: the manifest lists both commands, and keeps the classifiers' time.
    main(["--out", str(tmp_path), "--steps", "3", "--batch-size", "2", "--checkpoint-every", "1"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    runs = manifest["training"]["runs"]
    assert [(r["from_step"], r["to_step"]) for r in runs] == [(0, 2), (2, 3)]
    assert "--steps 3" in runs[1]["command"] and manifest["training"]["steps"] == 3
    assert "classifier_seconds" in manifest["training"]


def test_loader_rejects_a_corrupted_file(tmp_path):
    import shutil

    import pytest

    from spare_core.toy.pipeline import WEIGHTS_DIR, ToyWeightsError, load_toy_pipeline

    for f in WEIGHTS_DIR.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    (tmp_path / "text_encoder.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ToyWeightsError, match="does not match manifest"):
        load_toy_pipeline(tmp_path)
    with pytest.raises(ToyWeightsError, match="manifest.json is missing"):
        load_toy_pipeline(tmp_path / "nowhere")
