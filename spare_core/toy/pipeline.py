"""Load the shipped toy model as a diffusers ``StableDiffusionPipeline``, offline.

The components are built from the configs in ``model.py`` and filled from the
safetensors files in ``weights/``, whose sha256 the manifest records. Nothing is
fetched from a hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from .classifier import CLASSIFIER_FILES, ToyClassifier
from .model import build_sample_scheduler, build_text_encoder, build_unet
from .text import build_tokenizer
from .vae import PixelShuffleVAE
from .world import OBJECTS, STYLES

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class ToyWeightsError(RuntimeError):
    """The shipped weights are missing or do not match their manifest."""


def read_manifest(weights_dir: Path = WEIGHTS_DIR) -> dict:
    path = Path(weights_dir) / "manifest.json"
    if not path.exists():
        raise ToyWeightsError(
            f"no toy model in {weights_dir}: manifest.json is missing. "
            "Train one with `python -m spare_core.toy.train --out <folder>`."
        )
    return json.loads(path.read_text())


def _load_checked(weights_dir: Path, name: str, manifest: dict, verify: bool) -> dict[str, torch.Tensor]:
    path = Path(weights_dir) / name
    if not path.exists():
        raise ToyWeightsError(f"toy weight file {path} is missing; re-clone the repository or retrain the toy model")
    if verify:
        expected = manifest["files"][name]["sha256"]
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            raise ToyWeightsError(
                f"{path} does not match manifest.json (sha256 {actual[:12]}..., expected {expected[:12]}...); "
                "it may be a Git LFS pointer or a partial download"
            )
    return load_file(path)


def load_toy_pipeline(
    weights_dir: str | Path = WEIGHTS_DIR,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
) -> StableDiffusionPipeline:
    """The toy text-to-image model as a ``StableDiffusionPipeline``."""
    weights_dir = Path(weights_dir)
    manifest = read_manifest(weights_dir)
    unet = build_unet()
    unet.load_state_dict(_load_checked(weights_dir, "unet.safetensors", manifest, verify))
    text_encoder = build_text_encoder()
    text_encoder.load_state_dict(_load_checked(weights_dir, "text_encoder.safetensors", manifest, verify))
    pipe = StableDiffusionPipeline(
        vae=PixelShuffleVAE(),
        text_encoder=text_encoder.eval(),
        tokenizer=build_tokenizer(),
        unet=unet.eval(),
        scheduler=build_sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def _load_classifier(weights_dir: Path, name: str, classifier: ToyClassifier, verify: bool) -> ToyClassifier:
    classifier.load_state_dict(_load_checked(weights_dir, name, read_manifest(weights_dir), verify))
    return classifier.eval()


def load_toy_classifiers(
    weights_dir: str | Path = WEIGHTS_DIR, verify: bool = True
) -> tuple[ToyClassifier, ToyClassifier]:
    """The shipped (object, style) classifiers, in eval mode."""
    object_file, style_file, _ = CLASSIFIER_FILES
    return (
        _load_classifier(Path(weights_dir), object_file, ToyClassifier(len(OBJECTS)), verify),
        _load_classifier(Path(weights_dir), style_file, ToyClassifier(len(STYLES)), verify),
    )


def load_grey_style_classifier(weights_dir: str | Path = WEIGHTS_DIR, verify: bool = True) -> ToyClassifier:
    """The shipped style classifier that sees only greyscale, in eval mode: it checks textures by their pattern."""
    grey_file = CLASSIFIER_FILES[2]
    return _load_classifier(Path(weights_dir), grey_file, ToyClassifier(len(STYLES), greyscale=True), verify)


def load_toy_backend(
    weights_dir: str | Path = WEIGHTS_DIR,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """The toy model as an engine backend, with the toy world as its prompt domain."""
    from ..backends.diffusers_backend import DiffusersBackend
    from .domain import ToyDomain

    return DiffusersBackend(load_toy_pipeline(weights_dir, device, dtype), arch="toy", domain=ToyDomain())
