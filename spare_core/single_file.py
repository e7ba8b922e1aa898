"""Building a diffusers pipeline from a single-file checkpoint, fully offline.

diffusers' ``from_single_file`` fetches the component configs from the Hub
unless ``config=`` names a local diffusers-layout folder. We always give it
one: it is assembled in a temporary folder from the JSON shipped in
``spare_core/model_configs/<arch>/`` (written from each architecture's known
values) and the CLIP BPE vocabulary shipped once in ``model_configs/clip_bpe/``.
With ``config=`` a local folder and ``original_config`` unset, diffusers reads
every component's config from that folder (``subfolder=<component>``) and the
weights from the checkpoint; with ``local_files_only=True`` nothing reaches
the network.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint_detect import Detected, detect_checkpoint, detect_prediction, read_shapes

logger = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).resolve().parent / "model_configs"
VOCAB_DIR = CONFIG_ROOT / "clip_bpe"
VOCAB_FILES = ("vocab.json", "merges.txt")
ARCHES = ("sd1", "sd2", "sdxl")


@dataclass
class LoadedCheckpoint:
    """A pipeline built from a checkpoint file, with what detection found and why."""

    pipe: Any  # StableDiffusionPipeline or StableDiffusionXLPipeline
    detected: Detected
    prediction_type: str
    prediction_reason: str


def component_configs(arch: str, prediction_type: str = "epsilon") -> dict[str, dict[str, Any]]:
    """The shipped configs of ``arch`` as ``{relative path: JSON object}``, adjusted for the prediction type.

    SD 2.x v-prediction checkpoints are the 768 px models (stable-diffusion-2 / 2-1): 96-latent UNet with
    upcast attention; epsilon ones are the 512 px base models.
    """
    if arch not in ARCHES:
        raise ValueError(f"no shipped configs for architecture {arch!r}; known: {', '.join(ARCHES)}")
    folder = CONFIG_ROOT / arch
    configs = {
        str(p.relative_to(folder).as_posix()): json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(folder.rglob("*.json"))
    }
    configs["scheduler/scheduler_config.json"]["prediction_type"] = prediction_type
    if arch == "sd2" and prediction_type == "v_prediction":
        configs["unet/config.json"].update(sample_size=96, upcast_attention=True)
        configs["vae/config.json"]["sample_size"] = 768
    return configs


def write_config_folder(configs: dict[str, dict[str, Any]], dest: Path) -> Path:
    """A diffusers-layout config folder at ``dest``: the JSON files, and the vocabulary in every tokenizer folder."""
    for rel, obj in configs.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    for tokenizer in sorted({Path(rel).parent for rel in configs if rel.startswith("tokenizer")}):
        for name in VOCAB_FILES:
            shutil.copyfile(VOCAB_DIR / name, dest / tokenizer / name)
    return dest


def pipeline_class(arch: str) -> type:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline


def load_checkpoint(path: str | Path, torch_dtype: torch.dtype = torch.float32) -> LoadedCheckpoint:
    """A ``.safetensors`` SD 1.x / 2.x / SDXL-base checkpoint as a diffusers pipeline, without the network.

    Raises :class:`~spare_core.checkpoint_detect.UnsupportedCheckpoint` (one line) for anything else.
    """
    path = Path(path)
    shapes = read_shapes(path)
    detected = detect_checkpoint(shapes, path.name)
    prediction, reason = detect_prediction(path, shapes, detected.arch)
    logger.info("%s: %s, %s (%s)", path.name, detected.family, prediction, reason)
    configs = copy.deepcopy(component_configs(detected.arch, prediction))
    cls = pipeline_class(detected.arch)
    extra = {"safety_checker": None} if detected.arch != "sdxl" else {}
    with tempfile.TemporaryDirectory(prefix="spare_configs_") as tmp:
        folder = write_config_folder(configs, Path(tmp))
        pipe = cls.from_single_file(str(path), config=str(folder), local_files_only=True, dtype=torch_dtype, **extra)
    pipe.set_progress_bar_config(disable=True)
    return LoadedCheckpoint(pipe, detected, prediction, reason)
