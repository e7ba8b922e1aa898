"""What the nodes need from ComfyUI around an engine call: progress, cancel, messages, pictures, the loras folder.

Kept apart from the node classes so that each node stays a thin form over
the engine's stage calls.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ._engine import engine

logger = logging.getLogger(__name__)

#: Messages the front end (``web/spare_training.js``) listens for.
PROGRESS_MESSAGE, DONE_MESSAGE, ERROR_MESSAGE = "spare.progress", "spare.done", "spare.error"
#: LoRAs the nodes write go here, under ComfyUI's first loras folder.
LORA_SUBFOLDER = "spare"


class HostProgress:
    """Engine events to ComfyUI: one progress bar per stage, and a message to the front end for each event."""

    def __init__(self, unique_id: str | None):
        self.unique_id = unique_id
        self.stage: str | None = None
        self.bar = None

    def __call__(self, event) -> None:
        import comfy.utils

        if event.stage != self.stage:
            self.stage = event.stage
            self.bar = comfy.utils.ProgressBar(max(1, event.total))
        self.bar.update_absolute(event.step, max(1, event.total))
        send(PROGRESS_MESSAGE, {
            "node": self.unique_id,
            "stage": event.stage,
            "step": event.step,
            "total": event.total,
            "loss": event.loss if event.loss is not None and math.isfinite(event.loss) else None,
            "message": event.message,
        })  # fmt: skip


def send(event: str, data: dict) -> None:
    """A message to the browser; nothing happens when no server runs (e.g. a script)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    if getattr(PromptServer, "instance", None) is not None:
        PromptServer.instance.send_sync(event, data)


def cancel_token():
    """A cancel token whose every check also runs ComfyUI's own interruption check (which raises)."""
    import comfy.model_management

    return engine.CancelToken(comfy.model_management.throw_exception_if_processing_interrupted)


def run_stage(unique_id: str | None, call: Callable, *args, **kwargs):
    """Run an engine call with ComfyUI's progress and cancel; report errors to the front end.

    The node runs inside ``torch.inference_mode()``; the engine itself trains outside it where it must.
    """
    try:
        return call(*args, on_event=HostProgress(unique_id), cancel=cancel_token(), **kwargs)
    except BaseException as exc:  # reported, never swallowed (ComfyUI's interrupt included)
        if _is_interrupt(exc):
            send(ERROR_MESSAGE, {"node": unique_id, "message": "interrupted", "cancelled": True})
        else:
            send(ERROR_MESSAGE, {"node": unique_id, "message": engine.describe_error(exc), "cancelled": False})
        raise


def _is_interrupt(exc: BaseException) -> bool:
    """ComfyUI's own interrupt (an Exception in some versions, a BaseException in others), or an engine cancel."""
    import comfy.model_management

    return isinstance(exc, (comfy.model_management.InterruptProcessingException, engine.ErasureCancelled))


# --------------------------------------------------------------------------- pictures


def to_comfy_images(images: torch.Tensor) -> torch.Tensor:
    """Engine images ``[N, 3, H, W]`` in [-1, 1] as a ComfyUI IMAGE ``[N, H, W, 3]`` in [0, 1]."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).contiguous()


def from_comfy_images(images: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE ``[N, H, W, C]`` in [0, 1] as engine images ``[N, 3, H, W]`` in [-1, 1]."""
    return images.detach().float().cpu()[..., :3].permute(0, 3, 1, 2) * 2 - 1


def pil_to_comfy(image) -> torch.Tensor:
    """A PIL image as a one-image ComfyUI IMAGE."""
    import numpy as np

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).unsqueeze(0)


def plot_to_comfy(plot: Callable[[Path], None]) -> torch.Tensor:
    """Run a plotting function that writes a PNG, and return the picture as a ComfyUI IMAGE."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plot.png"
        plot(path)
        with Image.open(path) as image:
            return pil_to_comfy(image)


# --------------------------------------------------------------------------- the loras folder


def safe_lora_name(name: str) -> str:
    """A file name that cannot leave its folder: letters, digits, ``-``, ``_`` and ``.`` only, no leading dot."""
    stem = Path(name.strip().replace("\\", "/")).name
    if stem.lower().endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")
    return (stem or "spare_lora")[:120]


def lora_destination(name: str) -> Path:
    """A new file under ``models/loras/spare/`` for ``name``: never an existing file (a counter is added)."""
    import folder_paths

    folder = Path(folder_paths.get_folder_paths("loras")[0]) / LORA_SUBFOLDER
    stem = safe_lora_name(name)
    path = folder / f"{stem}.safetensors"
    counter = 1
    while path.exists():
        path = folder / f"{stem}_{counter}.safetensors"
        counter += 1
    return path
