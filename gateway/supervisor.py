"""Keeps components running: restart on failure with jittered, capped backoff.

A component that fails is restarted after ``min(max_delay, base_delay * factor**n)``
scaled by a random factor in [0.5, 1] (so a fleet does not reconnect in lock-step).
A failure is logged once, with its traceback, when a streak of failures starts; the
recovery is logged once when the component has signalled ready (or simply kept running
for ``stable_after`` seconds) after failing. More than ``burst`` failures within
``window`` seconds means restarting is not helping: the supervisor raises
`ComponentGaveUp`, which ends the gateway with a non-zero status so that systemd (or
whatever runs the node) restarts the whole process.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from gateway.clock import Clock, SystemClock

logger = logging.getLogger(__name__)

Ready = Callable[[], None]


class Component(Protocol):
    """A long-lived part of the gateway (uplink, outbox, a driver, the rule engine)."""

    @property
    def name(self) -> str:
        """Stable name used in logs, task names and health reports."""
        ...

    async def run(self, ready: Ready) -> None:
        """Run until cancelled; call `ready()` once set up. Raising means failure."""
        ...


class ComponentState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPED = "stopped"
    FAILED = "failed"


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

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Backoff before restart number `attempt` (1-based): jittered and capped."""
        # the exponent is bounded so that huge attempt counts cannot overflow a float
        ceiling = min(self.max_delay, self.base_delay * self.factor ** min(attempt - 1, 64))
        return ceiling * (rng or random).uniform(0.5, 1.0)


class Supervisor:
    """Runs one component under a `RestartPolicy` and tracks its state."""

    def __init__(
        self,
        component: Component,
        policy: RestartPolicy | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.component = component
        self.policy = policy or RestartPolicy()
        self.clock = clock or SystemClock()
        self.state = ComponentState.STARTING
        self.started = asyncio.Event()
        self.restarts = 0
        self.failures = 0
        self.last_error: BaseException | None = None
        self._rng = rng
        self._recent: deque[float] = deque()
        self._streak = 0  # failures since the component was last healthy

    @property
    def name(self) -> str:
        return self.component.name

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
        self._healthy()

    def _healthy(self) -> None:
        if self._streak:
            logger.info("component %s recovered after %d failure(s)", self.name, self._streak)
            self._streak = 0

    def _failed(self, exc: Exception) -> float:
        now = self.clock.monotonic()
        self.failures += 1
        self._streak += 1
        self.last_error = exc
        self._recent.append(now)
        while self._recent and now - self._recent[0] > self.policy.window:
            self._recent.popleft()
        if len(self._recent) >= self.policy.burst:
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
