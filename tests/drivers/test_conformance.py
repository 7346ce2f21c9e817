"""The built-in drivers pass the vendor conformance kit, against real simulated devices."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

from drivers.api import DriverConformance
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.profile import load_profile
from drivers.serial.driver import SerialDriver
from firmware_sim.broker import free_port
from firmware_sim.city import ManholeCover
from firmware_sim.modbus import ModbusSimServer, SimSlave
from firmware_sim.pty import PtyPair
from firmware_sim.serial_devices import RainGauge


class TestModbusConformance(DriverConformance):
    driver = ModbusDriver
    write_ok = ("tilt_limit", 12.5)
    write_refused: ClassVar[list[tuple[str, Any]]] = [
        ("tilt", 1),
        ("tilt_limit", 500),
        ("tilt_limit", "x"),
    ]

    @asynccontextmanager
    async def device(self) -> AsyncIterator[dict[str, Any]]:
        slave = SimSlave(unit=1, profile=load_profile("manhole_cover"), sensor=ManholeCover())
        async with ModbusSimServer([slave]) as server:
            yield {
                "type": "modbus",
                "id": "mh-1",
                "profile": "manhole_cover",
                "unit": 1,
                "connection": {"kind": "tcp", "host": "127.0.0.1", "port": server.port},
                "poll_interval": "100ms",
                "timeout": "300ms",
            }

    def unreachable_config(self) -> dict[str, Any]:
        return {
            "type": "modbus",
            "id": "mh-1",
            "profile": "manhole_cover",
            "unit": 1,
            "connection": {"kind": "tcp", "host": "127.0.0.1", "port": free_port()},
            "poll_interval": "100ms",
            "timeout": "300ms",
        }

    def invalid_configs(self) -> list[dict[str, Any]]:
        base = self.unreachable_config()
        return [
            {**base, "unit": 300},
            {**base, "profile": "no_such_profile"},
            {**base, "poll_groups": [{"name": "g", "interval": "1s", "points": ["nope"]}]},
        ]


class TestSerialConformance(DriverConformance):
    driver = SerialDriver

    @asynccontextmanager
    async def device(self) -> AsyncIterator[dict[str, Any]]:
        with tempfile.TemporaryDirectory() as tmp, PtyPair(Path(tmp), "rain") as pty:
            gauge = RainGauge(str(pty.device), rate_hz=20)
            async with asyncio.TaskGroup() as tg:
                sim = tg.create_task(gauge.run(), name="testkit.rain-gauge")
                try:
                    yield {
                        "type": "serial",
                        "id": "rain-1",
                        "profile": "rain_gauge",
                        "port": str(pty.host),
                    }
                finally:
                    sim.cancel()

    def unreachable_config(self) -> dict[str, Any]:
        return {
            "type": "serial",
            "id": "rain-1",
            "profile": "rain_gauge",
            "port": "/dev/serial/by-id/not-plugged-in",
            "reconnect_max": "200ms",
        }

    def invalid_configs(self) -> list[dict[str, Any]]:
        base = self.unreachable_config()
        return [{**base, "parity": "X"}, {**base, "profile": "nope"}, {**base, "baudrate": 0}]
