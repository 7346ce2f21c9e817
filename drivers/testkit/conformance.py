"""The conformance suite behind `drivers.testkit`."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar, get_args

import pytest
from pydantic import BaseModel, ValidationError

from drivers.api import (
    ConfigFileError,
    Detection,
    Driver,
    DriverConfig,
    Event,
    FoundObject,
    PointValue,
    Quality,
    Reading,
    SystemClock,
    WriteError,
    compatible,
)
from drivers.context import ContextBase
from drivers.sharing import SharedResources

T = TypeVar("T")


class RecordingContext(ContextBase):
    """A driver context that keeps what the driver publishes and reports, for checks."""

    def __init__(self, device_id: str, driver_type: str, node_id: str = "testkit-node") -> None:
        super().__init__(
            node_id=node_id,
            device_id=device_id,
            driver_type=driver_type,
            clock=SystemClock(),
            shared=SharedResources(),
        )
        self.records: list[Reading | Event] = []
        self.detections: list[tuple[Detection, bytes | None]] = []
        self.online: bool | None = None

    async def publish(self, reading: Reading) -> None:
        self.records.append(reading)

    async def publish_values(
        self, values: Sequence[PointValue], *, ts: datetime | None = None
    ) -> None:
        for batch in self.batches(values, ts):
            self.records.extend(batch.readings())

    def set_online(self, online: bool, reason: str = "") -> None:
        if online == self.online:
            return
        self.online = online
        self.records.append(
            Event(
                kind="device.online" if online else "device.offline",
                source=self._device_id,
                message=reason,
                node=self._node_id,
            )
        )

    async def infer(self, model: str, image: Any) -> list[FoundObject]:
        raise LookupError(f"model {model!r}: the conformance kit runs no models")

    async def publish_detection(self, detection: Detection, snapshot: bytes | None = None) -> None:
        self.detections.append((detection, snapshot))

    @property
    def readings(self) -> list[Reading]:
        return [r for r in self.records if isinstance(r, Reading)]

    @property
    def states(self) -> list[str]:
        return [r.kind for r in self.records if isinstance(r, Event)]


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    pending: list[Any] = [model]
    while pending:
        item = pending.pop()
        if isinstance(item, type) and issubclass(item, BaseModel):
            if item in seen:
                continue
            seen.append(item)
            for field in item.model_fields.values():
                pending.append(field.annotation)
        pending.extend(get_args(item))
    return seen


class DriverConformance:
    """Base class of a driver's conformance tests; see the module docstring."""

    driver: ClassVar[type[Driver]]
    start_timeout: ClassVar[float] = 15.0  # until the first reading
    stop_timeout: ClassVar[float] = 2.0  # from cancel to finished
    write_ok: ClassVar[tuple[str, Any] | None] = None  # a write that must succeed
    write_refused: ClassVar[list[tuple[str, Any]]] = []  # writes that must be refused

    @asynccontextmanager
    async def device(self) -> AsyncIterator[dict[str, Any]]:
        """Start a device the driver can read; yield a valid config for it."""
        raise NotImplementedError
        yield {}  # pragma: no cover - marks this as a generator

    def unreachable_config(self) -> dict[str, Any]:
        """A valid config whose device cannot be reached."""
        raise NotImplementedError

    def invalid_configs(self) -> list[dict[str, Any]]:
        """Configs the driver must refuse, when validated or when their files load
        (beyond the generic checks)."""
        return []

    # --- helpers -----------------------------------------------------------------------

    def _config(self, data: dict[str, Any]) -> DriverConfig:
        return self.driver.config_model.model_validate(data)

    @asynccontextmanager
    async def _running(
        self, config: DriverConfig
    ) -> AsyncIterator[tuple[Driver, RecordingContext]]:
        driver = self.driver(config)
        ctx = RecordingContext(config.id, self.driver.type)
        threads_before = set(threading.enumerate())
        tasks_before = asyncio.all_tasks()
        task = asyncio.get_running_loop().create_task(
            driver.run(ctx), name=f"testkit.driver[{config.id}]"
        )
        try:
            yield driver, ctx
        finally:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=self.stop_timeout)
            assert done, f"run() did not stop within {self.stop_timeout}s of being cancelled"
            assert task.cancelled(), "run() must end by raising CancelledError when cancelled"
            for _ in range(50):
                leaked = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
                if not leaked:
                    break
                await asyncio.sleep(0.02)
            assert not leaked, f"tasks left behind: {[t.get_name() for t in leaked]}"
            await asyncio.get_running_loop().shutdown_default_executor()
            for _ in range(100):
                extra = {t for t in threading.enumerate() if t.is_alive()} - threads_before
                if not extra:
                    break
                await asyncio.sleep(0.02)
            assert not extra, f"threads left behind: {[t.name for t in extra]}"

    # --- the checks --------------------------------------------------------------------

    def test_declares_type_config_and_api_version(self) -> None:
        driver = self.driver
        assert isinstance(driver.type, str) and driver.type
        assert issubclass(driver.config_model, DriverConfig)
        assert get_args(driver.config_model.model_fields["type"].annotation) == (driver.type,)
        assert compatible(driver.api_version), f"API {driver.api_version} is not supported"

    def test_every_config_field_is_described(self) -> None:
        missing = [
            f"{model.__name__}.{name}"
            for model in _models(self.driver.config_model)
            for name, field in model.model_fields.items()
            if not field.description
        ]
        assert missing == [], f"fields without a description: {missing}"

    async def test_config_refuses_unknown_keys_and_invalid_values(self) -> None:
        async with self.device() as good:
            self._config(good).load_files()  # the files it names (profiles) load too
            with pytest.raises(ValidationError):
                self._config({**good, "no_such_key": 1})
            with pytest.raises(ValidationError):
                self._config({**good, "type": "not-" + self.driver.type})
            for bad in self.invalid_configs():
                # refused by validation, or when the files it names are loaded
                with pytest.raises((ValidationError, ConfigFileError)):
                    self._config(bad).load_files()

    async def test_publishes_well_formed_readings_and_stops_promptly(self) -> None:
        async with self.device() as data:
            config = self._config(data)
            async with self._running(config) as (_, ctx):
                async with asyncio.timeout(self.start_timeout):
                    while not ctx.readings:
                        await asyncio.sleep(0.02)
                assert "device.online" in ctx.states
        now = datetime.now(UTC)
        for r in ctx.readings:
            assert r.device == config.id
            assert r.node == "testkit-node"
            assert isinstance(r.point, str) and r.point
            assert r.value is None or isinstance(r.value, bool | int | float | str)
            if isinstance(r.value, float):
                assert math.isfinite(r.value), f"{r.point} is not finite"
            assert r.value is not None or r.quality is not Quality.GOOD
            assert r.ts.tzinfo is not None and abs((now - r.ts).total_seconds()) < 600

    async def test_unreachable_device_is_reported_not_raised(self) -> None:
        config = self._config(self.unreachable_config())
        async with self._running(config) as (_, ctx):
            async with asyncio.timeout(self.start_timeout):
                while "device.offline" not in ctx.states:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # run() goes on retrying instead of raising
        assert ctx.readings == []

    async def test_writes_are_validated(self) -> None:
        """Writes the driver supports succeed; anything else is a WriteError with a reason
        (a driver without writes refuses them all)."""
        async with self.device() as data, self._running(self._config(data)) as (driver, ctx):
            async with asyncio.timeout(self.start_timeout):
                while "device.online" not in ctx.states:
                    await asyncio.sleep(0.02)
            if self.write_ok is not None:
                await driver.write(*self.write_ok)
            for point, value in [*self.write_refused, ("no-such-point", 1)]:
                with pytest.raises(WriteError) as info:
                    await driver.write(point, value)
                assert info.value.reason, "a refused write must say why"
