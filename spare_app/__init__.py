"""The SPARE app: erase a concept in the browser and compare before and after (``spare app``).

A front end like the command line and the ComfyUI nodes: it turns what the
user types into engine calls (``spare_core``) and results into pictures and
files. gradio is imported only when the app starts (``pip install
spare-unlearning[app]``).
"""

from __future__ import annotations

from typing import Any


def launch(*args: Any, **kwargs: Any):
    """Start the app; see :func:`spare_app.ui.launch`."""
    from .ui import launch as _launch

    return _launch(*args, **kwargs)


__all__ = ["launch"]
