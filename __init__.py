"""SPARE as a ComfyUI custom-node pack.

ComfyUI imports this file as the package of the repository folder. It must also
import cleanly outside ComfyUI (plain Python, pytest), so nothing here imports
ComfyUI at import time. The node classes arrive with the nodes issue; until
then the mappings are empty and ComfyUI loads the pack without nodes.
"""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
