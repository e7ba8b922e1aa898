"""Small matplotlib helpers: a headless backend and atomic PNG saving."""

from __future__ import annotations

import io
from pathlib import Path

from .fileio import write_bytes


def subplots(width: float = 7.0, height: float = 3.6):
    """A figure and one axes, on the headless Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def save_figure(fig, path: str | Path) -> None:
    """Write ``fig`` as PNG atomically."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_bytes(path, buffer.getvalue())
