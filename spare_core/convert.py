"""Turn a PyTorch ``.pth``/``.pt``/``.ckpt`` weights file into safetensors, the only weights format SPARE reads.

Some published weights (e.g. the UnlearnCanvas classifiers) are pickled
PyTorch files. A pickle can run code when it is read, so this is the one place
SPARE opens one, and only with ``torch.load(weights_only=True)``: PyTorch's
restricted unpickler, which builds tensors and plain containers and refuses
anything else. A file that needs more (a whole pickled model object) is
refused with a message; ask its authors for a state dict, or save one from
the model in an environment you trust.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .fileio import save_safetensors

logger = logging.getLogger(__name__)

#: Keys under which training scripts commonly nest the state dict, tried in order.
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "ema")
#: A prefix every key carries when a model was saved from inside a wrapper (DataParallel, DDP).
WRAPPER_PREFIX = "module."


class ConversionError(ValueError):
    """The file cannot be turned into safetensors; the message says why and what to do."""


def _find_state_dict(obj: Any, path: str = "") -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded object: the object itself, or one nested under a usual key."""
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and all(isinstance(k, str) for k in tensors):
            return tensors
        for key in NESTED_STATE_KEYS:
            if key in obj:
                return _find_state_dict(obj[key], f"{path}[{key!r}]")
        keys = ", ".join(map(str, list(obj)[:8]))
        raise ConversionError(f"found no tensors in the file{' under ' + path if path else ''} (keys: {keys})")
    raise ConversionError(f"the file holds a {type(obj).__name__}{' at ' + path if path else ''}, not a state dict")


def read_pickled_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a pickled PyTorch weights file, read with ``weights_only=True`` only.

    Nested state dicts (``{"state_dict": ...}``) are found, and a ``module.`` prefix
    that every key shares (a model saved from DataParallel) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"no such file: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConversionError(
            f"{path} holds more than weights (PyTorch's safe loader refused it: {str(exc).splitlines()[0]}). "
            "SPARE reads only plain state dicts; save one with torch.save(model.state_dict(), ...) where you trust "
            "the file, or ask its authors for safetensors"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise ConversionError(f"{path} is not a readable PyTorch weights file ({exc})") from exc
    tensors = _find_state_dict(loaded)
    if all(k.startswith(WRAPPER_PREFIX) for k in tensors):
        tensors = {k[len(WRAPPER_PREFIX) :]: v for k, v in tensors.items()}
    return tensors


def convert_to_safetensors(source: str | Path, destination: str | Path) -> dict[str, Any]:
    """Convert a pickled weights file to safetensors (written atomically); returns a summary.

    Tensors that share storage are copied apart, as safetensors requires. The
    file's metadata records the source file's name.
    """
    source, destination = Path(source), Path(destination)
    if destination.suffix != ".safetensors":
        raise ConversionError(f"the output must end in .safetensors, got {destination.name}")
    if destination.resolve() == source.resolve():
        raise ConversionError("the output must be a different file from the input")
    tensors = read_pickled_weights(source)
    copies = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    save_safetensors(copies, destination, metadata={"converted_from": source.name})
    parameters = sum(v.numel() for v in copies.values())
    logger.info("converted %s -> %s (%d tensors, %d values)", source, destination, len(copies), parameters)
    return {"tensors": len(copies), "parameters": parameters, "bytes": destination.stat().st_size}
