"""Drivers running against real devices, with everything they publish recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from drivers.api import Driver
from drivers.sharing import SharedResources
from gateway.bus import Bus
from gateway.devices import DeviceContext
from gateway.kernel.clock import SystemClock
from gateway.kernel.records import Event, Reading, ReadingBatch, Record
from gateway.snapshots import SnapshotStore


@dataclass
class Harness:
    bus: Bus = field(default_factory=Bus)
    shared: SharedResources = field(default_factory=SharedResources)
    drivers: dict[str, Any] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)

    def readings(self, device: str, point: str | None = None) -> list[Reading]:
        every = (
            r
            for record in self.records
            for r in (record.readings() if isinstance(record, ReadingBatch) else [record])
        )
        return [
            r
            for r in every
            if isinstance(r, Reading) and r.device == device and (point is None or r.point == point)
        ]

    def latest(self, device: str) -> dict[str, Any]:
        return {r.point: r.value for r in self.readings(device)}

    def events(self, device: str) -> list[str]:
        return [r.kind for r in self.records if isinstance(r, Event) and r.source == device]

    def event_messages(self, device: str, kind: str) -> list[str]:
        return [
            r.message
            for r in self.records
            if isinstance(r, Event) and r.source == device and r.kind == kind
        ]

    async def wait(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Poll `condition` until it holds; on timeout say what was seen."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    await asyncio.sleep(0.02)
        except TimeoutError:
            seen = {
                d: (getattr(drv, "online", None), self.latest(d)) for d, drv in self.drivers.items()
            }
            raise AssertionError(f"condition not met within {timeout}s; devices: {seen}") from None


@asynccontextmanager
async def run_drivers(
    *drivers: Driver, models: Any = None, snapshots: SnapshotStore | None = None
) -> AsyncIterator[Harness]:
    h = Harness()
    sub = h.bus.subscribe("test", maxsize=100_000)

    async def drain() -> None:
        while True:
            h.records.append(await sub.get())

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(drain(), name="test.drain")]
        for driver in drivers:
            h.drivers[driver.device_id] = driver
            ctx = DeviceContext(
                node_id="n1",
                device_id=driver.device_id,
                bus=h.bus,
                clock=SystemClock(),
                shared=h.shared,
                driver_type=driver.type,
                models=models,
                snapshots=snapshots,
            )
            tasks.append(tg.create_task(driver.run(ctx), name=f"driver[{driver.device_id}]"))
        try:
            yield h
        finally:
            for task in tasks:
                task.cancel()
            # what was published before the drivers stopped but not yet drained (an event
            # is queued as its device's flag flips) belongs to the record too
            while (record := sub.get_nowait()) is not None:
                h.records.append(record)
            sub.close()
