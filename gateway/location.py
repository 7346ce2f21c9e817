"""Where the node is: the latest fix of its GPS, or a fixed position for a lamp post.

The service follows the readings of the configured GPS device on the bus. `snapshot()`
describes the current fix for events and rules — always with its age, and marked
`valid: false` (with the reason) when there is no fix, the receiver reports no fix, the
receiver went offline, or the fix is older than `stale_after`. A stale position is never
passed off as current.

`at(ts)` is where a moving node was at a given moment, such as when a camera frame was
captured: the last fix moved along its heading at its speed (km/h, as GPS profiles report
it) for the time between the fix and `ts`. A GPS reports once a second or less often (a
driver's report policy may throttle it further), and at 30 km/h a second is 8 m.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeGuard

from gateway.bus import Bus, DropPolicy
from gateway.kernel.component import Ready
from gateway.kernel.geo import move
from gateway.kernel.records import Event, Reading, ReadingBatch

logger = logging.getLogger(__name__)

FIELDS = ("lat", "lon", "alt", "speed", "heading", "fix_quality", "satellites", "hdop")


@dataclass
class Fix:
    """The latest known values from the receiver and when the position last changed."""

    values: dict[str, Any] = field(default_factory=dict)
    position_at: float | None = None  # monotonic time of the last lat/lon
    position_ts: datetime | None = None  # and its reading's timestamp
    receiver_valid: bool = True
    offline_reason: str | None = None


class LocationService:
    """Component keeping the node's location current."""

    name = "location"

    def __init__(
        self,
        bus: Bus,
        *,
        source: str | None = None,
        fixed: dict[str, float] | None = None,
        stale_after: float = 5.0,
    ) -> None:
        self.bus = bus
        self.source = source
        self.fixed = fixed
        self.stale_after = stale_after
        self.fix = Fix()
        self.updates = 0

    def snapshot(self, now: float | None = None) -> dict[str, Any] | None:
        """The location to attach to an event, or None when the node has no location."""
        if self.fixed is not None:
            return {**self.fixed, "valid": True, "source": "fixed"}
        if self.source is None:
            return None
        now = time.monotonic() if now is None else now
        fix = self.fix
        if fix.position_at is None:
            return {"valid": False, "reason": "no fix yet", "source": self.source}
        age = round(now - fix.position_at, 3)
        out: dict[str, Any] = {k: fix.values[k] for k in FIELDS if k in fix.values}
        out.update(age_s=age, source=self.source)
        if fix.offline_reason is not None:
            out.update(valid=False, reason=f"receiver offline: {fix.offline_reason}")
        elif not fix.receiver_valid:
            out.update(valid=False, reason="receiver reports no fix")
        elif age > self.stale_after:
            out.update(valid=False, reason=f"stale: last fix {age:.1f}s ago")
        else:
            out["valid"] = True
        return out

    def at(self, ts: datetime, now: float | None = None) -> dict[str, Any] | None:
        """`snapshot()` for the moment `ts`, dead-reckoned from the last fix (at most
        `stale_after` seconds either way); ``extrapolated_s`` says by how long."""
        out = self.snapshot(now)
        fix = self.fix
        if not out or not out.get("valid") or out.get("source") == "fixed":
            return out
        speed, heading = out.get("speed"), out.get("heading")
        if fix.position_ts is None or not _number(speed) or not _number(heading):
            return out
        dt = (ts - fix.position_ts).total_seconds()
        dt = max(-self.stale_after, min(self.stale_after, dt))
        lat, lon = move((float(out["lat"]), float(out["lon"])), heading, speed / 3.6 * dt)
        out.update(lat=round(lat, 7), lon=round(lon, 7), extrapolated_s=round(dt, 3))
        return out

    def observe(self, record: object, now: float | None = None) -> None:
        """Take one record from the bus into account."""
        if isinstance(record, ReadingBatch):
            if record.device == self.source:
                for reading in record.readings():
                    self.observe(reading, now)
            return
        if isinstance(record, Reading) and record.device == self.source:
            now = time.monotonic() if now is None else now
            self.updates += 1
            fix = self.fix
            fix.offline_reason = None
            if record.point == "fix_valid":
                fix.receiver_valid = bool(record.value)
            elif record.point in FIELDS:
                fix.values[record.point] = record.value
                if record.point in ("lat", "lon"):
                    fix.position_at, fix.position_ts = now, record.ts
                    fix.receiver_valid = True
        elif isinstance(record, Event) and record.source == self.source:
            if record.kind == "device.offline":
                self.fix.offline_reason = record.message or "offline"
            elif record.kind == "device.online":
                self.fix.offline_reason = None

    async def run(self, ready: Ready) -> None:
        if self.source is None:
            ready()
            return
        with self.bus.subscribe(
            "location",
            maxsize=1000,
            policy=DropPolicy.DROP_OLDEST,
            kinds=(Reading, ReadingBatch, Event),
        ) as sub:
            ready()
            async for record in sub:
                self.observe(record)


def _number(v: object) -> TypeGuard[float]:
    return isinstance(v, int | float) and not isinstance(v, bool)
