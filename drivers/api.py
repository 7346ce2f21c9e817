"""The driver API that built-in and vendor drivers are written against.

A driver is a class with a pydantic config model keyed on ``type``, a long-lived
cancellable ``run(ctx)``, and optionally ``write(point, value)`` and ``discover()``.
It talks to the rest of the node only through its `DriverContext`: it publishes
`Reading` records, reports whether its device is online, logs, reads the clock and shares
physical resources (one RS-485 line serves many slaves) with other drivers. It never sees
MQTT, the outbox or the rules.

Compatibility: `API_VERSION` is ``"MAJOR.MINOR"``. A driver declares the version it was
written for in its ``api_version`` class attribute; the gateway loads it when the majors
are equal and the driver's minor is not newer than the gateway's.
"""

from __future__ import annotations

import abc
import builtins
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from gateway.clock import Clock
from gateway.records import Detection, Quality, Reading, Value

API_VERSION = "1.1"  # 1.1: infer() and publish_detection() for camera drivers

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

T = TypeVar("T")
ConfigT = TypeVar("ConfigT", bound="DriverConfig")


class DriverConfig(BaseModel):
    """Base of every driver's config: one entry of the node config's ``devices`` list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="Driver type; selects which driver runs this device.")
    id: str = Field(
        pattern=DEVICE_ID_PATTERN,
        description="Device id, unique on the node; used in topics, logs and rules.",
    )
    name: str | None = Field(default=None, description="Human-readable name of the device.")
    enabled: bool = Field(default=True, description="Set to false to keep but not run it.")


class DriverError(Exception):
    """Base of errors a driver reports to the gateway."""


class WriteError(DriverError):
    """A write was refused or failed; the message says precisely why."""

    def __init__(self, device: str, point: str, reason: str) -> None:
        super().__init__(f"{device}.{point}: {reason}")
        self.device = device
        self.point = point
        self.reason = reason


class DriverContext(Protocol):
    """What the gateway gives a running driver."""

    @property
    def node_id(self) -> str:
        """Id of the node the driver runs on."""
        ...

    @property
    def device_id(self) -> str:
        """Id of the device this driver instance serves."""
        ...

    @property
    def logger(self) -> logging.Logger:
        """Logger named after the driver and device."""
        ...

    @property
    def clock(self) -> Clock:
        """Wall-clock, monotonic time and sleep; replaceable in tests."""
        ...

    def reading(
        self,
        point: str,
        value: Value,
        *,
        unit: str | None = None,
        quality: Quality = Quality.GOOD,
        ts: datetime | None = None,
    ) -> Reading:
        """A `Reading` of this device, stamped with the node id and the clock's time."""
        ...

    async def publish(self, reading: Reading) -> None:
        """Hand a reading to the node (may wait briefly if consumers are behind)."""
        ...

    def set_online(self, online: bool, reason: str = "") -> None:
        """Report the device reachable or not; the gateway reports each change once."""
        ...

    def shared(
        self, key: str, factory: Callable[[], Awaitable[T]]
    ) -> AbstractAsyncContextManager[T]:
        """Use a resource shared between drivers (e.g. a serial line) under `key`.

        The first user creates it with `factory`; it is closed (its ``aclose()`` awaited,
        if it has one) when the last user leaves the ``async with`` block.
        """
        ...

    async def infer(self, model: str, image: Any) -> list[Any]:
        """(API 1.1) Run the node's model `model` on a BGR image, off the event loop.

        Returns found objects (``label``, ``score``, ``box`` in image pixels); raises
        LookupError when the model is not loaded, with the reason.
        """
        ...

    async def publish_detection(self, detection: Detection, snapshot: bytes | None = None) -> None:
        """(API 1.1) Hand a detection to the node, with the JPEG of its frame if any."""
        ...


class Driver(abc.ABC):
    """Base class of drivers. Subclasses set `type`, `config_model` and implement `run`."""

    type: ClassVar[str]
    config_model: ClassVar[builtins.type[DriverConfig]]
    api_version: ClassVar[str] = API_VERSION

    def __init__(self, config: DriverConfig) -> None:
        self.config = config

    @property
    def device_id(self) -> str:
        return self.config.id

    @abc.abstractmethod
    async def run(self, ctx: DriverContext) -> None:
        """Poll or listen until cancelled. A lost device is reported, not raised."""

    async def write(self, point: str, value: Any) -> None:
        """Write `value` to `point`; raise `WriteError` with the reason if refused."""
        raise WriteError(self.config.id, point, f"driver {self.type!r} does not support writes")

    async def discover(self) -> list[dict[str, Any]]:
        """Describe devices or points this driver can find by itself (may be empty)."""
        return []


def compatible(driver_api: str, host_api: str = API_VERSION) -> bool:
    """Whether a driver written for `driver_api` can run on a host offering `host_api`."""
    try:
        d_major, d_minor = (int(p) for p in driver_api.split("."))
        h_major, h_minor = (int(p) for p in host_api.split("."))
    except ValueError:
        return False
    return d_major == h_major and d_minor <= h_minor
