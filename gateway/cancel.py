"""Cancellation that cannot be lost."""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raise `CancelledError` if the current task has been asked to stop.

    On Python 3.11, `asyncio.wait_for` returns the inner result instead of raising when
    a cancellation arrives just as the inner awaitable completes; libraries built on it
    (pymodbus, aiomqtt) then carry on as if nothing happened. The request is still
    recorded on the task (`Task.cancelling()`), so checking after such calls restores it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
