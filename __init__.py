"""SPARE as a ComfyUI custom-node pack.

ComfyUI imports this file as the package of the repository folder and calls
``comfy_entrypoint`` (the V3 schema API). This module must not define
``NODE_CLASS_MAPPINGS``: ComfyUI's loader looks for it first and would then
never call the entry point. It must also import cleanly outside ComfyUI
(plain Python, pytest), so nothing here imports ComfyUI or the nodes at
import time.
"""

import logging

#: The front-end extension (live training view) that ComfyUI serves to the browser.
WEB_DIRECTORY = "./web"
#: The oldest ComfyUI whose ``comfy_api.latest`` has what the nodes use.
MINIMUM_COMFYUI = "0.3.64"


async def comfy_entrypoint():
    """The SPARE nodes as a ComfyUI extension; one clear log line in a ComfyUI too old for the schema API."""
    try:
        from comfy_api.latest import ComfyExtension, io  # noqa: F401
    except ImportError:
        logging.getLogger("spare").error(
            "SPARE nodes need ComfyUI %s or newer (the comfy_api.latest schema API); update ComfyUI", MINIMUM_COMFYUI
        )
        return None
    from .spare_nodes.extension import SpareExtension

    return SpareExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
