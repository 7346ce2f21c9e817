"""Hosting drivers: each configured device runs as a supervised component."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from drivers.api import Driver, PointValue
from drivers.context import ContextBase
from drivers.sharing import SharedResources
from gateway.bus import Bus
from gateway.kernel.clock import Clock
from gateway.kernel.component import Ready
from gateway.kernel.inference import FoundObject, Inference
from gateway.kernel.records import Detection, Event, Reading, Severity, stamp
from gateway.snapshots import SnapshotStore
from gateway.supervisor import run_abandonable

logger = logging.getLogger(__name__)

T = TypeVar("T")


class DeviceContext(ContextBase):
    """The `DriverContext` the node gives one device's driver."""

    def __init__(
        self,
        *,
        node_id: str,
        device_id: str,
        bus: Bus,
        clock: Clock,
        shared: SharedResources,
        driver_type: str,
        models: Inference | None = None,
        snapshots: SnapshotStore | None = None,
        pace: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(
            node_id=node_id,
            device_id=device_id,
            driver_type=driver_type,
            clock=clock,
            shared=shared,
        )
        self._bus = bus
        self.online: bool | None = None
        self.reason = ""
        self.failed = False  # offline because the driver itself failed
        self._after_failure: tuple[bool, str] | None = None  # what it reported since
        self.published = 0
        self.detections = 0
        self._models = models
        self._snapshots = snapshots
        self._pace = pace

    @property
    def pace(self) -> float:
        return self._pace() if self._pace is not None else 1.0

    async def publish(self, reading: Reading) -> None:
        if self.failed and self._after_failure is None:
            self._after_failure = (True, "")  # it reads again
        self.published += 1
        await self._bus.publish(stamp(reading, self._node_id))

    async def publish_values(
        self, values: Sequence[PointValue], *, ts: datetime | None = None
    ) -> None:
        if not values:
            return
        if self.failed and self._after_failure is None:
            self._after_failure = (True, "")  # it reads again
        self.published += len(values)
        for batch in self.batches(values, ts):
            await self._bus.publish(batch)

    def set_online(self, online: bool, reason: str = "") -> None:
        if self.failed:
            # after a failure the node speaks for the device until the restarted driver
            # has run a while (`driver_recovered`): no online/offline flapping meanwhile
            self._after_failure = (online, reason)
            return
        if online == self.online:
            return
        first = self.online is None
        self.online = online
        self.reason = reason
        if online:
            if not first:
                self._logger.info("device %s is back online", self._device_id)
        else:
            self._logger.warning("device %s is offline: %s", self._device_id, reason or "?")
        self._bus.publish_nowait(
            Event(
                kind="device.online" if online else "device.offline",
                source=self._device_id,
                severity=Severity.INFO if online else Severity.WARNING,
                message=reason,
                data={"device": self._device_id, "online": online},
                ts=self._clock.now(),
                node=self._node_id,
            )
        )

    async def infer(self, model: str, image: Any) -> list[FoundObject]:
        if self._models is None:
            raise LookupError(f"model {model!r}: this node has no models configured")
        return await self._models.infer(model, image)

    async def publish_detection(self, detection: Detection, snapshot: bytes | None = None) -> None:
        if snapshot is not None and self._snapshots is not None and detection.frame_id:
            self._snapshots.put(detection.frame_id, snapshot)
        self.detections += 1
        await self._bus.publish(stamp(detection, self._node_id))

    def driver_failed(self, reason: str) -> None:
        """The driver raised: its device is offline (reported once, with the error)."""
        if not self.failed:
            self.set_online(False, reason)
            self.failed = True
        self._after_failure = None

    def driver_recovered(self) -> None:
        """The restarted driver has run a while: report what it says of its device."""
        if not self.failed:
            return
        self.failed = False
        if self._after_failure is not None:
            self.set_online(*self._after_failure)
            self._after_failure = None


class DriverComponent:
    """A device's driver as a supervised component of the node.

    A driver that raises is restarted with backoff for as long as the node runs (the
    supervisor's policy for drivers); its device is reported offline once, with the
    error, and online once when the restarted driver reads again. One that ignores its
    cancellation is abandoned after `stop_timeout` so that the node still stops.
    """

    def __init__(self, driver: Driver, ctx: DeviceContext, *, stop_timeout: float = 5.0) -> None:
        self.driver = driver
        self.ctx = ctx
        self.stop_timeout = stop_timeout

    @property
    def name(self) -> str:
        return f"driver[{self.driver.device_id}]"

    async def run(self, ready: Ready) -> None:
        ready()
        try:
            await run_abandonable(
                self.driver.run(self.ctx), name=f"{self.name}.run", stop_timeout=self.stop_timeout
            )
        except Exception as exc:
            self.ctx.driver_failed(f"driver failed: {type(exc).__name__}: {exc}"[:300])
            raise
        # run() is meant to last until cancelled; one that ends has nothing more to read
        self.ctx.logger.warning("driver of %s finished on its own", self.driver.device_id)
