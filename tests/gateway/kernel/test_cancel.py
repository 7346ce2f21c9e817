from __future__ import annotations

import asyncio

import pytest

from gateway.kernel.cancel import raise_if_cancelling


async def test_a_swallowed_cancellation_is_raised_again() -> None:
    reached = asyncio.Event()
    after_swallow: list[str] = []

    async def swallowing_library_call() -> None:
        try:
            reached.set()
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return  # what asyncio.wait_for does on Python 3.11 when the result is ready

    async def worker() -> None:
        await swallowing_library_call()
        after_swallow.append("resumed")
        raise_if_cancelling()
        after_swallow.append("kept running")  # must not happen

    task = asyncio.create_task(worker(), name="worker")
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert after_swallow == ["resumed"]


async def test_no_cancellation_no_exception() -> None:
    raise_if_cancelling()  # nothing pending: returns normally
    assert asyncio.current_task() is not None
