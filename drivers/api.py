"""The driver SDK: everything a built-in or vendor driver is written against.

A driver is a class with a pydantic config model keyed on ``type``, a long-lived
cancellable ``run(ctx)``, and optionally ``write(point, value)`` and ``discover()``.
It talks to the rest of the node only through its `DriverContext`: it publishes
`Reading` records, reports whether its device is online, logs, reads the clock, shares
physical resources (one RS-485 line serves many slaves) with other drivers and, for
cameras, asks the node's models about images. It never sees MQTT, the outbox or the rules.

Import everything from this module (``from drivers.api import Driver, Reading, ...``);
nothing else of cityneuron is part of the SDK. The conformance kit is
``drivers.api.DriverConformance`` (it needs pytest, so it loads on first use).

Compatibility: `API_VERSION` is ``"MAJOR.MINOR"``. A driver declares the version it was
written for in its ``api_version`` class attribute; the node loads it when the majors
are equal and the driver's minor is not newer than the node's. 2.0 made this module the
whole SDK: 1.x drivers imported `gateway.config.Duration` and `gateway.records`, which
are gone (docs/driver-sdk.md, "Migrating from 1.x").
"""

from __future__ import annotations

import abc
import builtins
import importlib.util
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from drivers.profiles import ProfileLoader, ProfileRef
from gateway.kernel.backoff import backoff
from gateway.kernel.cancel import raise_if_cancelling
from gateway.kernel.clock import Clock, SystemClock
from gateway.kernel.durations import Duration
from gateway.kernel.inference import FoundObject
from gateway.kernel.plugins import compatible as versions_compatible
from gateway.kernel.records import Detection, Event, Quality, Reading, Severity, Value, new_id
from gateway.kernel.yamlsource import SourceError, load_model

if TYPE_CHECKING:
    from drivers.testkit import DriverConformance, RecordingContext

__all__ = [
    "API_VERSION",
    "DEVICE_ID_PATTERN",
    "Clock",
    "ConfigFileError",
    "Detection",
    "Driver",
    "DriverConfig",
    "DriverConformance",
    "DriverContext",
    "DriverError",
    "Duration",
    "Event",
    "FoundObject",
    "PointValue",
    "ProfileLoader",
    "ProfileRef",
    "Quality",
    "Reading",
    "RecordingContext",
    "Severity",
    "SourceError",
    "SystemClock",
    "Value",
    "WriteError",
    "backoff",
    "compatible",
    "load_model",
    "new_id",
    "raise_if_cancelling",
]

API_VERSION = "2.1"  # 2.1: publish_values, pace; 2.0: drivers.api is the whole SDK

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

T = TypeVar("T")
PointValue = tuple[str, Value, str | None, Quality]  # point, value, unit, quality
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

    def load_files(self) -> None:
        """Read and check the files this device's config names (a profile, a certificate).

        Called once for every device after the whole node config has validated (the
        validation itself reads no files); raise `ConfigFileError` naming the field, and
        the node reports it with that field's file and line. The default reads nothing.
        """


class ConfigFileError(ValueError):
    """A file named by a config field cannot be used; `field` is the field's name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


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

    @property
    def pace(self) -> float:
        """How much longer than configured a polling driver should wait between polls
        (1.0 normally; more when the node cannot keep up, so that it serves every device
        a little less often instead of failing some). Since API 2.1."""
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

    async def publish_values(
        self, values: Sequence[PointValue], *, ts: datetime | None = None
    ) -> None:
        """Hand the node what one poll read, each value as ``(point, value, unit,
        quality)``, all measured at `ts` (the clock's time by default).

        The same readings as one `publish` per value, at a fraction of the cost: one
        record for the node instead of one per value. Use it wherever a driver reads
        several points at once. (Since API 2.1.)
        """
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

    async def infer(self, model: str, image: Any) -> list[FoundObject]:
        """Run the node's model `model` on a BGR image, off the event loop.

        Returns the objects found (``label``, ``score``, ``box`` in image pixels); raises
        LookupError when the model is not loaded, with the reason.
        """
        ...

    async def publish_detection(self, detection: Detection, snapshot: bytes | None = None) -> None:
        """Hand a detection to the node, with the JPEG of its frame if any."""
        ...


class Driver(abc.ABC):
    """Base class of drivers. Subclasses set `type`, `config_model` and implement `run`."""

    type: ClassVar[str]
    config_model: ClassVar[builtins.type[DriverConfig]]
    api_version: ClassVar[str] = API_VERSION
    # modules it imports only when it runs, which a node may lack, and how to get them:
    # a config using the driver where they are missing is refused with that hint
    requires: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str] = ""

    def __init__(self, config: DriverConfig) -> None:
        self.config = config

    @property
    def device_id(self) -> str:
        return self.config.id

    @classmethod
    def missing_modules(cls) -> list[str]:
        """Those of `requires` that cannot be imported here."""
        return [m for m in cls.requires if importlib.util.find_spec(m) is None]

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
    return versions_compatible(driver_api, host_api)


def __getattr__(name: str) -> Any:
    # the conformance kit needs pytest, which a node does not install
    if name in ("DriverConformance", "RecordingContext"):
        from drivers import testkit  # noqa: PLC0415

        return getattr(testkit, name)
    raise AttributeError(f"module 'drivers.api' has no attribute {name!r}")
