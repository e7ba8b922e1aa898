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


def plot_losses(losses: list[float], path: str | Path, title: str = "Training loss") -> None:
    """The loss of every training step (log scale when it spans more than a decade), as a PNG."""
    fig, ax = subplots(width=6.0, height=3.2)
    steps = range(1, len(losses) + 1)
    ax.plot(steps, losses, color="#1f77b4", linewidth=1.2)
    positive = [v for v in losses if v > 0]
    if positive and max(positive) > 10 * min(positive):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    save_figure(fig, path)
