"""Hosting drivers: each configured device runs as a supervised component."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from drivers.api import Driver, DriverContext
from gateway.bus import Bus
from gateway.clock import Clock
from gateway.records import Detection, Event, Quality, Reading, Severity, Value, stamp
from gateway.snapshots import SnapshotStore
from gateway.supervisor import Ready

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Shared:
    resource: Any
    users: int


class SharedResources:
    """Resources several drivers use at once (one serial line, many slaves), refcounted."""

    def __init__(self) -> None:
        self._items: dict[str, _Shared] = {}
        self._lock = asyncio.Lock()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    @contextlib.asynccontextmanager
    async def use(self, key: str, factory: Callable[[], Awaitable[T]]) -> AsyncIterator[T]:
        async with self._lock:
            item = self._items.get(key)
            if item is None:
                item = _Shared(await factory(), 0)
                self._items[key] = item
            item.users += 1
        try:
            yield cast(T, item.resource)
        finally:
            item.users -= 1
            if item.users == 0 and self._items.get(key) is item:
                del self._items[key]
                close = getattr(item.resource, "aclose", None)
                if close is not None:
                    result = close()
                    if inspect.isawaitable(result):
                        await result


class DeviceContext(DriverContext):
    """The `DriverContext` the gateway gives one device's driver."""

    def __init__(
        self,
        *,
        node_id: str,
        device_id: str,
        bus: Bus,
        clock: Clock,
        shared: SharedResources,
        driver_type: str,
        models: Any = None,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self._node_id = node_id
        self._device_id = device_id
        self._bus = bus
        self._clock = clock
        self._shared = shared
        self._logger = logging.getLogger(f"drivers.{driver_type}.{device_id}")
        self.online: bool | None = None
        self.reason = ""
        self.published = 0
        self.detections = 0
        self._models = models
        self._snapshots = snapshots

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    @property
    def clock(self) -> Clock:
        return self._clock

    def reading(
        self,
        point: str,
        value: Value,
        *,
        unit: str | None = None,
        quality: Quality = Quality.GOOD,
        ts: datetime | None = None,
    ) -> Reading:
        return Reading(
            device=self._device_id,
            point=point,
            value=value,
            unit=unit,
            quality=quality,
            ts=ts or self._clock.now(),
            node=self._node_id,
        )

    async def publish(self, reading: Reading) -> None:
        self.published += 1
        await self._bus.publish(stamp(reading, self._node_id))

    def set_online(self, online: bool, reason: str = "") -> None:
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

    def shared(
        self, key: str, factory: Callable[[], Awaitable[T]]
    ) -> contextlib.AbstractAsyncContextManager[T]:
        return self._shared.use(key, factory)

    async def infer(self, model: str, image: Any) -> list[Any]:
        if self._models is None:
            raise LookupError(f"model {model!r}: this node has no models configured")
        found: list[Any] = await self._models.infer(model, image)
        return found

    async def publish_detection(self, detection: Detection, snapshot: bytes | None = None) -> None:
        if snapshot is not None and self._snapshots is not None and detection.frame_id:
            self._snapshots.put(detection.frame_id, snapshot)
        self.detections += 1
        await self._bus.publish(stamp(detection, self._node_id))


class DriverComponent:
    """A device's driver as a supervised gateway component."""

    def __init__(self, driver: Driver, ctx: DeviceContext) -> None:
        self.driver = driver
        self.ctx = ctx

    @property
    def name(self) -> str:
        return f"driver[{self.driver.device_id}]"

    async def run(self, ready: Ready) -> None:
        ready()
        await self.driver.run(self.ctx)
