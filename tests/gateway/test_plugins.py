from __future__ import annotations

from typing import ClassVar, Literal

import pytest

from drivers.api import Driver, DriverConfig, DriverContext, compatible
from drivers.modbus.driver import ModbusDriver
from gateway.plugins import DriverRegistry, load_drivers


class GoodConfig(DriverConfig):
    type: Literal["good"]


class Good(Driver):
    type = "good"
    config_model = GoodConfig

    async def run(self, ctx: DriverContext) -> None:
        return None


class FutureConfig(DriverConfig):
    type: Literal["future"]


class Future(Good):
    type = "future"
    config_model = FutureConfig
    api_version: ClassVar[str] = "3.0"


class WrongTag(Good):
    type = "wrongtag"  # its config model still says "good"


def test_builtin_drivers_are_loaded() -> None:
    registry = load_drivers(plugins=False)
    assert registry.drivers["modbus"] is ModbusDriver
    assert registry.failures == []


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (object, "is not a subclass of drivers.api.Driver"),
        (Future, "written for driver API 3.0, this node offers 2.1"),
        (WrongTag, "config_model.type must be annotated Literal['wrongtag']"),
    ],
)
def test_broken_plugins_are_reported_and_skipped(candidate: object, reason: str) -> None:
    registry = DriverRegistry()
    registry.add(candidate, "vendor-pkg (x:Y)", "x")
    assert registry.drivers == {}
    (failure,) = registry.failures
    assert reason in failure.reason
    assert failure.source == "vendor-pkg (x:Y)"


def test_a_type_cannot_be_taken_twice() -> None:
    registry = DriverRegistry()
    registry.add(Good, "first", "good")
    registry.add(Good, "second", "good")
    assert registry.drivers == {"good": Good}
    assert "already provided by first" in registry.failures[0].reason


@pytest.mark.parametrize(
    ("driver", "host", "ok"),
    [
        ("1.0", "1.0", True),
        ("1.0", "1.3", True),
        ("1.4", "1.3", False),
        ("2.0", "1.9", False),
        ("x", "1.0", False),
    ],
)
def test_api_compatibility(driver: str, host: str, ok: bool) -> None:
    assert compatible(driver, host) is ok
