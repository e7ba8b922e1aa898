"""Double of ComfyUI ``comfy_api/latest/__init__.py``: ``io``, ``ui`` and ``ComfyExtension``."""

from __future__ import annotations

from abc import ABC, abstractmethod

from . import _io as io
from . import _ui as ui


class ComfyExtension(ABC):
    async def on_load(self) -> None:  # noqa: B027 (not abstract in ComfyUI either)
        """Called when the extension is loaded."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The extension's node classes."""


comfy_io = io

__all__ = ["ComfyExtension", "io", "ui", "comfy_io"]
