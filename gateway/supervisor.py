"""Keeps components running: restart on failure with jittered, capped backoff.

A component that fails is restarted after ``min(max_delay, base_delay * factor**n)``
scaled by a random factor in [0.5, 1] (so a fleet does not reconnect in lock-step).
A failure is logged once, with its traceback, when a streak of failures starts; the
recovery is logged once when the component has signalled ready (or simply kept running
for ``stable_after`` seconds) after failing.

For a core component (the outbox, the uplink, the rules), more than ``burst`` failures
within ``window`` seconds means restarting is not helping: the supervisor raises
`ComponentGaveUp`, which ends the node with a non-zero status so that systemd (or
whatever runs it) restarts the whole process. Every other component (a driver, the
health endpoint, a model) is restarted for as long as the node runs (``give_up=False``):
one broken device never restarts the others.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from gateway.kernel.backoff import backoff
from gateway.kernel.clock import Clock, SystemClock
from gateway.kernel.component import Component, ComponentState, ComponentStatus
from gateway.kernel.records import iso_time, utcnow

__all__ = [
    "Component",
    "ComponentGaveUp",
    "ComponentState",
    "RestartPolicy",
    "Supervisor",
    "abandoned",
    "run_abandonable",
]

logger = logging.getLogger(__name__)

_abandoned: set[asyncio.Task[Any]] = set()


class ComponentGaveUp(RuntimeError):  # noqa: N818 - reads as what happened
    """A component failed too often in too short a time; restarting is not helping."""

    def __init__(self, name: str, failures: int, window: float, last: BaseException) -> None:
        super().__init__(
            f"component {name!r} failed {failures} times within {window:g}s; "
            f"giving up (last error: {last!r})"
        )
        self.component = name
        self.failures = failures
        self.last_error = last


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How a supervisor restarts its component."""

    base_delay: float = 0.5
    max_delay: float = 60.0
    factor: float = 2.0
    burst: int = 5
    window: float = 60.0
    stable_after: float = 30.0
    give_up: bool = True  # False: restart for as long as the node runs

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Backoff before restart number `attempt` (1-based): jittered and capped."""
        return backoff(
            attempt, first=self.base_delay, cap=self.max_delay, factor=self.factor, rng=rng
        )


class Supervisor:
    """Runs one component under a `RestartPolicy` and tracks its state."""

    def __init__(
        self,
        component: Component,
        policy: RestartPolicy | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        core: bool = True,
        recover_on_ready: bool = True,
        on_recovered: Callable[[], None] | None = None,
    ) -> None:
        self.component = component
        self.policy = policy or RestartPolicy()
        self.core = core
        # False for components that say ready at once (a driver): only running for
        # `stable_after` seconds shows that a restart helped
        self.recover_on_ready = recover_on_ready
        self.on_recovered = on_recovered or _nothing
        self.clock = clock or SystemClock()
        self.state = ComponentState.STARTING
        self.started = asyncio.Event()
        self.restarts = 0
        self.failures = 0
        self.last_error: BaseException | None = None
        self._rng = rng
        self._recent: deque[float] = deque()
        self._streak = 0  # failures since the component was last healthy
        self._failing_since: str | None = None
        self.on_change: Callable[[], None] = _nothing  # a failure streak began or ended

    @property
    def name(self) -> str:
        return self.component.name

    def status(self) -> ComponentStatus:
        """The component's state, and while it fails, why and since when."""
        failing = self._streak > 0 and self.last_error is not None
        return ComponentStatus(
            name=self.name,
            state=self.state,
            core=self.core,
            restarts=self.restarts,
            failures=self.failures,
            error=_describe(self.last_error) if failing and self.last_error else None,
            failing_since=self._failing_since if failing else None,
        )

    async def run(self) -> None:
        """Run the component until it returns, is cancelled or gives up."""
        while True:
            self.state = ComponentState.STARTING
            loop = asyncio.get_running_loop()
            stable = loop.call_later(self.policy.stable_after, self._healthy)
            try:
                await self.component.run(self._ready)
            except asyncio.CancelledError:
                self.state = ComponentState.STOPPED
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of a component is restarted
                delay = self._failed(exc)
            else:
                self.state = ComponentState.STOPPED
                logger.info("component %s finished", self.name)
                return
            finally:
                stable.cancel()
            self.state = ComponentState.BACKOFF
            await self.clock.sleep(delay)
            self.restarts += 1

    def _ready(self) -> None:
        self.state = ComponentState.RUNNING
        self.started.set()
        if self.recover_on_ready:
            self._healthy()

    def _healthy(self) -> None:
        if self._streak:
            logger.info("component %s recovered after %d failure(s)", self.name, self._streak)
            self._streak = 0
            self._failing_since = None
            self.on_recovered()
            self.on_change()

    def _failed(self, exc: Exception) -> float:
        now = self.clock.monotonic()
        self.failures += 1
        self._streak += 1
        self.last_error = exc
        if self._streak == 1:
            self._failing_since = iso_time(utcnow())
            self.on_change()
        self._recent.append(now)
        while self._recent and now - self._recent[0] > self.policy.window:
            self._recent.popleft()
        if self.policy.give_up and len(self._recent) >= self.policy.burst:
            self.state = ComponentState.FAILED
            logger.error(
                "component %s failed %d times within %gs; giving up",
                self.name,
                len(self._recent),
                self.policy.window,
            )
            raise ComponentGaveUp(self.name, len(self._recent), self.policy.window, exc) from exc
        delay = self.policy.delay(self._streak, self._rng)
        if self._streak == 1:
            logger.error("component %s failed; restarting with backoff", self.name, exc_info=exc)
        else:
            logger.debug("component %s failed again (%r); retry in %.2fs", self.name, exc, delay)
        return delay


def _nothing() -> None:
    pass


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


async def run_abandonable(
    coro: Coroutine[Any, Any, None], *, name: str, stop_timeout: float
) -> None:
    """Run `coro` as task `name` until it ends (its exception is raised here) or this call
    is cancelled; then cancel it too and wait at most `stop_timeout` seconds.

    Code the node does not control (a vendor's driver) may ignore its cancellation. It
    is then abandoned: logged, kept referenced in `abandoned()` until it ends, and this
    call still ends with the cancellation, so that the node stops in bounded time.
    """
    task = asyncio.get_running_loop().create_task(coro, name=name)
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=stop_timeout)
        if not done:
            _abandoned.add(task)
            task.add_done_callback(_abandoned.discard)
            logger.error(  # noqa: TRY400 - a task that ignores cancellation, no traceback
                "%s did not stop within %gs of being cancelled; abandoned", name, stop_timeout
            )
        elif not task.cancelled() and task.exception() is not None:
            logger.debug("%s failed while stopping: %r", name, task.exception())
        raise
    task.result()


def abandoned() -> list[asyncio.Task[Any]]:
    """Tasks `run_abandonable` gave up waiting for that are still running."""
    return [t for t in _abandoned if not t.done()]
