"""Cancellation that cannot be lost."""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raise `CancelledError` if the current task has been asked to stop.

    On Python 3.11, `asyncio.wait_for` returns the inner result instead of raising when
    a cancellation arrives just as the inner awaitable completes; libraries built on it
    (pymodbus, aiomqtt) then carry on as if nothing happened. The request is still
    recorded on the task (`Task.cancelling()`), so checking after such calls restores it.

    The count must be accurate for this to be safe. On Python 3.11 a `TaskGroup` whose
    child fails after the body finished leaves a stale request behind, so in this code
    base the body of every TaskGroup awaits until the group's work is done.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
