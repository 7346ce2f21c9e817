"""Running the node's event loop with a bounded end.

`asyncio.run` waits, at the end, for every task still alive to finish its cancellation.
A vendor's driver that ignores its cancellation (`supervisor.run_abandonable` has already
given up on it) would then hold the process for as long as it likes. Here the leftovers
get `cancel_timeout` seconds; those still running are reported and dropped with the loop.
Everything the node must keep is committed by then (the outbox stops last).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Literal, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


EventLoop = Literal["auto", "uvloop", "asyncio"]


def new_loop(kind: EventLoop = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's (the same asyncio API, its machinery in C: about a
    quarter less CPU in bench/modbus_load.py) where installed and asked for, else
    asyncio's own."""
    if kind == "uvloop" or (kind == "auto" and importlib.util.find_spec("uvloop") is not None):
        import uvloop  # noqa: PLC0415  # optional: not on every platform

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(
    main: Coroutine[Any, Any, T],
    *,
    cancel_timeout: float = 2.0,
    abandoned: Callable[[], Iterable[asyncio.Task[Any]]] = list,
    loop_kind: EventLoop = "asyncio",
) -> T:
    """Run `main` on a new event loop (`loop_kind`, see `new_loop`) and close it, waiting
    at most `cancel_timeout` seconds for tasks that outlive it (not at all for those
    `abandoned()` names: they have had their time already)."""
    loop = new_loop(loop_kind)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_leftovers(loop, cancel_timeout, set(abandoned()))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(_shutdown_executor(loop, within=cancel_timeout))
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_leftovers(
    loop: asyncio.AbstractEventLoop, timeout: float, given_up: set[asyncio.Task[Any]]
) -> None:
    for task in given_up:
        task._log_destroy_pending = False  # type: ignore[attr-defined]  # reported already
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done() and t not in given_up]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    done, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=timeout))
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            logger.error("task %s failed while stopping", task.get_name(), exc_info=error)
    for task in pending:
        logger.error(
            "task %s still running %gs after the node stopped; dropped", task.get_name(), timeout
        )
        # the loop closes under it: say so once here instead of at garbage collection
        task._log_destroy_pending = False  # type: ignore[attr-defined]


async def _shutdown_executor(loop: asyncio.AbstractEventLoop, *, within: float) -> None:
    try:
        async with asyncio.timeout(within):
            await loop.shutdown_default_executor()
    except TimeoutError:
        logger.error("worker threads still busy %gs after the node stopped", within)  # noqa: TRY400
