"""Errors as people read them: one line that says what went wrong and, where it can, what to change.

Every front end (the command line, the nodes, the app) shows a failure with
:func:`describe_error`, so that the same mistake reads the same everywhere.
"""

from __future__ import annotations

#: Errors whose message is written for the user already (it says what to change): shown without their type.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def describe_error(exc: BaseException) -> str:
    """``exc`` as one line: its message with line breaks folded, prefixed by its type unless it is a user error."""
    from torch import OutOfMemoryError

    if isinstance(exc, OutOfMemoryError):
        return (
            "out of memory; lower batch_size or generation_batch_size (--batch-size, --generation-batch-size), "
            "use fp16 weights, or use the CPU"
        )
    text = " ".join(str(exc).split())
    if isinstance(exc, _USER_ERRORS) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
