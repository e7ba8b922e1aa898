"""The engine, imported the way this copy of the repository is installed.

Inside ComfyUI the repository folder is the package (``<pack>.spare_nodes`` next to
``<pack>.spare_core``), so the engine is a sibling package reached relatively; outside
ComfyUI (pytest, a plain interpreter) ``spare_core`` is a top-level package.
"""

from __future__ import annotations

if __package__ and "." in __package__:  # <pack>.spare_nodes inside ComfyUI
    from .. import spare_core as engine
    from ..spare_core import architectures, backend, lora_naming
else:
    import spare_core as engine
    from spare_core import architectures, backend, lora_naming

__all__ = ["engine", "architectures", "backend", "lora_naming"]
