"""Overload: is the node keeping up with what it was asked to do?

Two signs, measured all the time and exported: the event loop's lag (how late a timer
fires: everything on the node shares the loop, so this is its saturation) and, per
device, the polls that started late and the ones skipped because their slot had already
passed (a driver that cannot keep its rate polls less often, at the same cadence for
every device on a saturated loop, instead of queueing work that times out).

While the loop lags, the node stretches the polling drivers' intervals by a common
factor, `pace` (up to 20x), and eases it back once the loop is quick again: it then
reads what it can deliver, devices of one kind alike, rather than reading more than it
can send and starving the uplink's round trips (delivery would collapse, not level off).
Devices an alarm rule reads are slowed last: they keep their rate until every other
device is at the slowest pace, and only pressure beyond that stretches theirs (up to 20x
as well), so an overloaded node still sees a flood or an open manhole at once.

When devices fall behind, or the loop lags, the node says so once: a ``node.overload``
event naming the late devices and by how much, the same on ``/readyz`` (``overload``),
and ``node.overload_cleared`` once it keeps up again for a while. It stays ready: an
overloaded node still delivers all it reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.bus import Bus
from gateway.kernel.component import Ready
from gateway.kernel.records import Event, Severity

logger = logging.getLogger(__name__)

TICK = 0.25  # s between two loop-lag probes
ADJUST = 1.0  # s between two changes of the pace
PACE_LAG = 0.05  # s of smoothed loop lag above which polling slows down
MAX_PACE = 20.0  # polls at most this many times further apart than configured
CHECK = 5.0  # s between two looks at the devices
LOOP_LAG_LIMIT = 0.25  # s of smoothed loop lag that counts as overload
CALM = 30.0  # s without lateness before the overload is declared over
MAX_LISTED = 20  # late devices named in an event


class Paced(Protocol):
    """What a polling driver reports about its pace (the Modbus driver has it)."""

    skipped_polls: int  # slots skipped because the previous poll ran past them
    poll_lag: float  # how late its polls start, smoothed, in seconds


@dataclass(frozen=True, slots=True)
class Late:
    device: str
    lag_s: float
    skipped: int  # polls skipped since the last look

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "lag_s": round(self.lag_s, 3), "skipped": self.skipped}


class LoadMonitor:
    """Component measuring the loop's lag and the devices' pace; reports overload once."""

    name = "load"

    def __init__(
        self,
        bus: Bus,
        drivers: Callable[[], Mapping[str, Any]],
        *,
        node: str,
        tick: float = TICK,
        check: float = CHECK,
        adjust: float = ADJUST,
        calm: float = CALM,
        loop_lag_limit: float = LOOP_LAG_LIMIT,
    ) -> None:
        self.bus = bus
        self.drivers = drivers  # device id -> driver
        self.node = node
        self.tick = tick
        self.check = check
        self.adjust = adjust
        self.calm = calm
        self.loop_lag_limit = loop_lag_limit
        # how hard polling is held back: 1 (not at all) to MAX_PACE**2; the devices no alarm
        # reads take the first factor of MAX_PACE, alarm devices what lies beyond it
        self.pressure = 1.0
        self.guarded: Callable[[str], bool] = _nobody  # does an alarm read this device?
        self.pace_lag = PACE_LAG
        self.loop_lag = 0.0  # smoothed (EWMA), seconds
        self.loop_lag_max = 0.0  # the largest since the last look
        self.overloaded = False
        self.episodes = 0
        self.late: list[Late] = []
        self._calm_since: float | None = None
        self._skipped: dict[str, int] = {}

    async def run(self, ready: Ready) -> None:
        loop = asyncio.get_running_loop()
        ready()
        next_check = loop.time() + self.check
        next_adjust = loop.time() + self.adjust
        window_max = 0.0
        while True:
            before = loop.time()
            await asyncio.sleep(self.tick)
            lag = max(0.0, loop.time() - before - self.tick)
            self.loop_lag += 0.2 * (lag - self.loop_lag)
            window_max = max(window_max, lag)
            if loop.time() >= next_adjust:
                next_adjust = loop.time() + self.adjust
                self._adjust()
            if loop.time() >= next_check:
                self.loop_lag_max, window_max = window_max, 0.0
                next_check = loop.time() + self.check
                await self._look(time.monotonic())

    @property
    def pace(self) -> float:
        """The factor on the intervals of devices no alarm rule reads."""
        return min(MAX_PACE, self.pressure)

    @property
    def alarm_pace(self) -> float:
        """The factor on the intervals of devices an alarm rule reads."""
        return max(1.0, self.pressure / MAX_PACE)

    def pace_of(self, device: str) -> float:
        """What `device`'s driver multiplies its poll interval by now."""
        if self.pressure <= 1.0:
            return 1.0
        return self.alarm_pace if self.guarded(device) else self.pace

    def _adjust(self) -> None:
        """Slow polling down while the loop lags, speed up when it does not: the node then
        reads what it can deliver, devices a little less often (alarm devices last), and
        its uplink keeps the round trips that carry the data out."""
        if self.loop_lag > self.pace_lag:
            self.pressure = min(MAX_PACE * MAX_PACE, self.pressure * 1.25)
        elif self.loop_lag < self.pace_lag / 2 and self.pressure > 1.0:
            self.pressure = max(1.0, self.pressure / 1.1)

    async def _look(self, now: float) -> None:
        late = []
        for device, driver in self.drivers().items():
            skipped = getattr(driver, "skipped_polls", None)
            if not isinstance(skipped, int):
                continue
            new = skipped - self._skipped.get(device, 0)
            self._skipped[device] = skipped
            if new > 0:
                late.append(Late(device, float(getattr(driver, "poll_lag", 0.0)), new))
        late.sort(key=lambda x: (-x.lag_s, x.device))
        self.late = late
        behind = bool(late) or self.loop_lag > self.loop_lag_limit or self.pressure > 1.0
        if behind:
            self._calm_since = None
            if not self.overloaded:
                self.overloaded = True
                self.episodes += 1
                await self._report("node.overload", Severity.WARNING)
        elif self.overloaded:
            if self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= self.calm:
                self.overloaded = False
                await self._report("node.overload_cleared", Severity.INFO)

    async def _report(self, kind: str, severity: Severity) -> None:
        status = self.status()
        if kind == "node.overload":
            names = ", ".join(f"{x.device} ({x.lag_s:.2f} s late)" for x in self.late[:5])
            message = (
                f"the node cannot keep up: {len(self.late)} device(s) polled less often than "
                f"configured{': ' + names if names else ''}; event loop lag "
                f"{self.loop_lag * 1000:.0f} ms"
            )
            logger.warning("%s", message)
        else:
            message = "the node keeps up again"
            logger.info("%s", message)
        await self.bus.publish(
            Event(
                kind=kind,
                source="node",
                severity=severity,
                message=message,
                data=status,
                node=self.node,
            )
        )

    def status(self) -> dict[str, Any]:
        """For /readyz and the events."""
        return {
            "overloaded": self.overloaded,
            "loop_lag_ms": round(self.loop_lag * 1000, 1),
            "loop_lag_max_ms": round(self.loop_lag_max * 1000, 1),
            "pace": round(self.pace, 2),
            "alarm_pace": round(self.alarm_pace, 2),
            "late_devices": len(self.late),
            "late": [x.to_dict() for x in self.late[:MAX_LISTED]],
        }


def _nobody(device: str) -> bool:
    return False


def load_metrics(monitor: LoadMonitor) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "cityneuron_event_loop_lag_seconds",
        "How late the event loop runs a timer (smoothed)",
        value=monitor.loop_lag,
    )
    yield GaugeMetricFamily(
        "cityneuron_event_loop_lag_max_seconds",
        "The largest event loop lag of the last check interval",
        value=monitor.loop_lag_max,
    )
    yield GaugeMetricFamily(
        "cityneuron_overloaded", "1 while devices fall behind", value=float(monitor.overloaded)
    )
    yield GaugeMetricFamily(
        "cityneuron_poll_pace",
        "Factor on every poll interval (1: as configured; more: the node slows polling)",
        value=monitor.pace,
    )
    yield GaugeMetricFamily(
        "cityneuron_alarm_poll_pace",
        "Factor on the poll intervals of devices an alarm rule reads (slowed last)",
        value=monitor.alarm_pace,
    )
    yield CounterMetricFamily(
        "cityneuron_overload_episodes", "Times the node fell behind", value=monitor.episodes
    )
