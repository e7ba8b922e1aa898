"""The LoRA of an erasure as an in-memory object: build, write, read (path, bytes or tensors), describe, apply.

Every front end (command line, ComfyUI nodes, app, benchmarks) makes its file
with :func:`build_lora`, so the same erasure gives the same file everywhere:
kohya-layout tensors in fp16, the erasure's settings in string metadata, and
no timings, so that the same settings and seed give byte-identical files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .adapter import SparseLoRA
from .backend import DiffusionBackend
from .config import ErasureConfig
from .fileio import write_bytes
from .lora_file import (
    LoraFileError,
    LoraModuleWeights,
    check_lora_arch,
    lora_file_metadata,
    lora_file_tensors,
    parse_lora_file_layers,
    read_safetensors,
    resolve_layers,
    safetensors_bytes,
    short_list,
)

if TYPE_CHECKING:
    from .erasure import ErasureResult

SPARE_VERSION = "0.1.0"

logger = logging.getLogger(__name__)


@dataclass
class Lora:
    """A kohya-layout LoRA: its tensors and string metadata, in memory."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = "LoRA"  # a name for messages (the file it came from, if any)

    def to_bytes(self) -> bytes:
        """The safetensors file, deterministically (same tensors and metadata, same bytes)."""
        return safetensors_bytes(self.tensors, self.metadata)

    def write(self, path: str | Path) -> Path:
        """Write the file atomically (temporary name, then rename); returns the path."""
        path = Path(path)
        self.layers()  # refuses broken weights before anything is written
        write_bytes(path, self.to_bytes())
        return path

    def layers(self) -> dict[str, LoraModuleWeights]:
        """The LoRA's UNet layers by kohya layer name, as float32 (LoraFileError if the file is broken).

        Text-encoder layers (``lora_te_*``, ``lora_te1_*``, ``lora_te2_*``) are checked but not included:
        see :meth:`text_encoder_layers`.
        """
        return parse_lora_file_layers(Path(self.source), self.tensors, self.metadata, None)[0]

    def text_encoder_layers(self) -> dict[str, LoraModuleWeights]:
        """The text-encoder layers of a file made by another tool (SPARE's own files have none).

        SPARE's adapter changes the UNet only, so :meth:`adapter` skips these (with a logged warning);
        the ComfyUI node hands them to ComfyUI's own loader, which applies them to the CLIP.
        """
        return parse_lora_file_layers(Path(self.source), self.tensors, self.metadata, None)[1]

    @property
    def arch(self) -> str | None:
        return self.metadata.get("spare_arch")

    def config(self) -> ErasureConfig:
        """The erasure settings stored in the file; LoraFileError if it was not made by SPARE."""
        if "spare_config" not in self.metadata:
            raise LoraFileError(f"{self.source} was not made by SPARE (no spare_config in its metadata)")
        return ErasureConfig.from_json(self.metadata["spare_config"])

    def describe(self) -> dict[str, Any]:
        """What the LoRA holds, as data: architecture, concepts, settings, modules, size.

        ``skipped_text_encoder_layers`` lists the text-encoder layers of a file from another tool,
        which SPARE's own adapter does not apply (empty for SPARE's files).
        """
        layers, text_layers = parse_lora_file_layers(Path(self.source), self.tensors, self.metadata, None)
        ranks = [w.rank for w in (layers or text_layers).values()]
        md = self.metadata
        settings = None
        if "spare_config" in md:
            settings = self.config().settings()
        return {
            "source": self.source,
            "bytes": len(self.to_bytes()),
            "arch": md.get("spare_arch") or md.get("ss_base_model_version") or "unknown",
            "base_model": md.get("spare_base_model") or md.get("ss_base_model_version") or "unknown",
            "rank": md.get("ss_network_dim", str(max(ranks))),
            "alpha": md.get("ss_network_alpha", "?"),
            "concepts": json.loads(md["spare_concepts"]) if "spare_concepts" in md else [],
            "settings": settings,
            "overrides": json.loads(md["spare_overrides"]) if "spare_overrides" in md else {},
            "modules": [
                {"layer": layer, "down": list(w.down.shape), "up": list(w.up.shape), "alpha": w.alpha}
                for layer, w in sorted(layers.items())
            ],
            "skipped_text_encoder_layers": sorted(text_layers),
        }

    def adapter(self, backend: DiffusionBackend) -> SparseLoRA:
        """A :class:`SparseLoRA` on ``backend``'s model holding these weights (LoraFileError if it does not fit)."""
        check_lora_arch(Path(self.source), self.metadata, backend.arch)
        layers, text_layers = parse_lora_file_layers(Path(self.source), self.tensors, self.metadata, None)
        name = Path(self.source).name
        if text_layers:
            logger.warning(
                "%s: %d text-encoder layer(s) not applied (SPARE's adapter changes the UNet only): %s",
                name, len(text_layers), short_list(sorted(text_layers)),
            )  # fmt: skip
        if not layers:
            raise LoraFileError(f"{name} holds text-encoder layers only; SPARE applies UNet layers: nothing to apply")
        names = resolve_layers(Path(self.source), list(layers), backend.lora_layer_table())
        try:
            adapter = SparseLoRA.from_weights(backend.denoiser(), {names[layer]: w for layer, w in layers.items()})
        except ValueError as exc:
            raise LoraFileError(f"{Path(self.source).name}: {exc}") from exc
        return adapter.to(backend.device)


def lora_from_adapter(
    adapter: SparseLoRA,
    backend: DiffusionBackend,
    config: ErasureConfig,
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Lora:
    """The LoRA of ``adapter`` for ``backend``'s architecture, with ``config`` in its metadata."""
    names = backend.lora_layer_names(adapter.module_names)
    layers = {names[name]: w for name, w in adapter.export().items()}
    extra = {
        "spare_version": SPARE_VERSION,
        "spare_config": config.to_json(),
        "spare_base_model": config.base_model,
        "spare_concepts": json.dumps([[p.concept, p.surrogate] for p in config.concepts]),
        "spare_modules": json.dumps(adapter.module_names),
        **(metadata or {}),
    }
    return Lora(lora_file_tensors(layers, dtype), lora_file_metadata(layers, backend.arch, extra))


def build_lora(
    result: ErasureResult,
    backend: DiffusionBackend,
    overrides: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Lora:
    """The LoRA file of an erasure: tensors, settings, the selected modules' saliency and the profile's peak.

    ``overrides`` (settings changed when re-running a stored erasure) are recorded too.
    """
    metadata = {
        "spare_module_scores": json.dumps({m: result.saliency.module_scores[m] for m in result.selected_modules}),
    }
    if result.profile is not None:
        metadata["spare_profile_peak"] = str(result.profile.peak())
    if overrides:
        metadata["spare_overrides"] = json.dumps(dict(overrides), sort_keys=True)
    return lora_from_adapter(result.adapter, backend, result.config, metadata, dtype)


def read_lora(
    source: str | Path | bytes | Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Lora:
    """A LoRA from a file path, the bytes of a file, or a dict of tensors (with ``metadata``).

    Only safetensors is read, never a pickle; a file that is not a kohya LoRA,
    or holds NaN weights, raises :class:`LoraFileError` saying what is wrong.
    """
    if isinstance(source, (str, Path)):
        tensors, md = read_safetensors(Path(source))
        lora = Lora(tensors, md, source=str(source))
    elif isinstance(source, (bytes, bytearray)):
        from safetensors.torch import load

        try:
            tensors = load(bytes(source))
            md = _metadata_of_bytes(bytes(source))
        except Exception as exc:  # safetensors raises its own error type for a bad buffer
            raise LoraFileError(f"the data is not a safetensors file ({exc}); LoRAs must be .safetensors") from exc
        lora = Lora(tensors, md, source="uploaded LoRA")
    else:
        lora = Lora(dict(source), dict(metadata or {}), source="LoRA")
    lora.layers()  # validate now, with a clear message
    return lora


def _metadata_of_bytes(data: bytes) -> dict[str, str]:
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return dict(header.get("__metadata__") or {})
