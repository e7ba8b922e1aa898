"""The pack as a ComfyUI extension (the V3 schema API's ``ComfyExtension``)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .nodes import NODES


class SpareExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
