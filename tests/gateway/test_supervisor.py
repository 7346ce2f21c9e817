from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime

import pytest

from gateway.kernel.component import ComponentState, Ready
from gateway.supervisor import ComponentGaveUp, RestartPolicy, Supervisor


class ManualClock:
    """Monotonic time that only moves when a supervisor sleeps; sleeps are recorded."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


class Flaky:
    """Fails `failures` times, then runs until cancelled."""

    def __init__(self, failures: int, *, exc: type[Exception] = OSError) -> None:
        self.failures = failures
        self.exc = exc
        self.runs = 0
        self.cleanups = 0
        self.running = asyncio.Event()

    @property
    def name(self) -> str:
        return "flaky"

    async def run(self, ready: Ready) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise self.exc(f"boom {self.runs}")
        ready()
        self.running.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.cleanups += 1


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = RestartPolicy(base_delay=1.0, factor=2.0, max_delay=10.0)
    rng = random.Random(7)
    delays = [policy.delay(n, rng) for n in range(1, 9)]
    ceilings = [1, 2, 4, 8, 10, 10, 10, 10]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling * 0.5 <= delay <= ceiling
    # jitter: the capped attempts do not all wait the same time
    assert len({round(d, 6) for d in delays[4:]}) == 4
    assert policy.delay(10_000, rng) <= 10.0


async def test_restarts_after_failures_and_logs_failure_and_recovery_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    comp = Flaky(failures=3)
    sup = Supervisor(comp, RestartPolicy(base_delay=1, factor=2, burst=10), clock=clock)
    caplog.set_level(logging.DEBUG, logger="gateway.supervisor")
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(sup.run(), name="sup")
        await asyncio.wait_for(comp.running.wait(), 5)
        assert sup.state is ComponentState.RUNNING
        assert sup.restarts == 3
        assert sup.failures == 3
        assert isinstance(sup.last_error, OSError)
        task.cancel()
    assert comp.cleanups == 1
    assert sup.state is ComponentState.STOPPED
    # exponential backoff with jitter in [0.5, 1] of 1, 2, 4
    assert len(clock.sleeps) == 3
    for slept, ceiling in zip(clock.sleeps, (1, 2, 4), strict=True):
        assert ceiling * 0.5 <= slept <= ceiling
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "failed; restarting" in errors[0].getMessage()
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recovered) == 1
    assert "3 failure" in recovered[0].getMessage()


async def test_gives_up_after_a_burst_of_failures() -> None:
    clock = ManualClock()
    comp = Flaky(failures=100)
    sup = Supervisor(comp, RestartPolicy(base_delay=1, burst=4, window=60), clock=clock)
    with pytest.raises(ComponentGaveUp) as info:
        await sup.run()
    assert comp.runs == 4
    assert info.value.failures == 4
    assert isinstance(info.value.last_error, OSError)
    assert sup.state is ComponentState.FAILED


async def test_slow_failures_outside_the_window_do_not_give_up() -> None:
    clock = ManualClock()
    comp = Flaky(failures=6)
    # each backoff is >= 50 s, so no 3 failures fall within a 60 s window
    policy = RestartPolicy(base_delay=100, max_delay=100, burst=3, window=60)
    sup = Supervisor(comp, policy, clock=clock)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(sup.run(), name="sup")
        await asyncio.wait_for(comp.running.wait(), 5)
        task.cancel()
    assert comp.runs == 7


async def test_cancellation_is_not_swallowed_and_component_cleans_up() -> None:
    comp = Flaky(failures=0)
    sup = Supervisor(comp)
    task = asyncio.create_task(sup.run(), name="sup")
    await asyncio.wait_for(comp.running.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert comp.cleanups == 1
    assert sup.state is ComponentState.STOPPED


async def test_component_that_returns_is_not_restarted() -> None:
    class Once:
        name = "once"
        runs = 0

        async def run(self, ready: Ready) -> None:
            ready()
            self.runs += 1

    comp = Once()
    sup = Supervisor(comp, clock=ManualClock())
    await asyncio.wait_for(sup.run(), 5)
    assert comp.runs == 1
    assert sup.state is ComponentState.STOPPED


async def test_recovery_by_running_long_enough_without_signalling_ready(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Silent:
        name = "silent"
        runs = 0

        async def run(self, ready: Ready) -> None:
            self.runs += 1
            if self.runs == 1:
                raise ValueError("first run fails")
            await asyncio.Event().wait()

    comp = Silent()
    sup = Supervisor(comp, RestartPolicy(base_delay=0.001, stable_after=0.05))
    caplog.set_level(logging.INFO, logger="gateway.supervisor")
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(sup.run(), name="sup")
        for _ in range(200):
            if any("recovered" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
        task.cancel()
    assert any("silent recovered after 1 failure" in r.getMessage() for r in caplog.records)


async def test_a_task_that_ignores_cancellation_is_abandoned_after_the_stop_timeout() -> None:
    from gateway.supervisor import abandoned, run_abandonable

    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # swallows the cancellation until released
            raise

    outer = asyncio.get_running_loop().create_task(
        run_abandonable(stubborn(), name="stubborn", stop_timeout=0.2), name="outer"
    )
    await asyncio.sleep(0.05)
    outer.cancel()
    started = asyncio.get_running_loop().time()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert 0.15 < asyncio.get_running_loop().time() - started < 1.0
    (left,) = abandoned()
    assert left.get_name() == "stubborn"
    release.set()
    await asyncio.sleep(0.05)
    assert abandoned() == []


async def test_the_task_s_own_failure_is_raised_to_the_caller() -> None:
    from gateway.supervisor import run_abandonable

    async def broken() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        await run_abandonable(broken(), name="broken", stop_timeout=1.0)
