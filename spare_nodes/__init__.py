"""SPARE's ComfyUI node pack: the nodes and the backend that runs the engine on a ComfyUI MODEL/CLIP.

Modules here may import ``comfy.*``: they run only inside ComfyUI (or against the
test double in ``tests/comfy/``). Nothing is imported at package import time.
"""
