"""Test double of ComfyUI's ``comfy`` package (see ``tests/comfy/SOURCES.md``). Never shipped."""
