"""One event stream and one cancel token for every stage of an erasure.

Each stage (``data``, ``profile``, ``saliency``, ``train``, ``preview``)
reports :class:`Event` objects to a callback and checks a :class:`CancelToken`
at every unit of work: every denoising step while sets or previews are drawn,
every grid timestep of the profile, every saliency batch and every training
step. Events are delivered synchronously on the thread that runs the stage
(the worker thread): a front end that updates a user interface from them
hands them over to its own thread.

A host may plug its own interruption check into the token: ComfyUI's
``throw_exception_if_processing_interrupted`` raises a ``BaseException``,
which propagates through the stage untouched; clean-up runs in ``finally``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: The stages, in the order an erasure runs them.
STAGES = ("data", "profile", "saliency", "train", "preview")


class ErasureCancelled(RuntimeError):
    """The run was cancelled; nothing was written (a training checkpoint survives)."""


@dataclass(frozen=True)
class Event:
    """Progress of one stage: ``step`` of ``total`` units done (images, grid points, batches, steps)."""

    stage: str
    step: int
    total: int
    loss: float | None = None
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 1.0


EventCallback = Callable[[Event], None]


class CancelToken:
    """Thread-safe request to stop. ``cancel()`` from any thread; stages call ``check()``.

    ``host_check`` is called by every ``check()``; it may raise the host's own
    interruption exception (even a ``BaseException``), which is not caught here.
    """

    def __init__(self, host_check: Callable[[], None] | None = None):
        self._event = threading.Event()
        self._host_check = host_check
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`ErasureCancelled` if cancelled; run the host's own check."""
        if self._host_check is not None:
            self._host_check()
        if self._event.is_set():
            raise ErasureCancelled(self.reason or "cancelled")


class Monitor:
    """What a stage reports to and checks: an event callback and a cancel token, both optional."""

    def __init__(self, on_event: EventCallback | None = None, cancel: CancelToken | None = None):
        self.on_event = on_event
        self.cancel = cancel

    def emit(self, stage: str, step: int, total: int, loss: float | None = None, message: str = "") -> None:
        if self.on_event is not None:
            self.on_event(Event(stage, step, total, loss, message))

    def check(self) -> None:
        if self.cancel is not None:
            self.cancel.check()
