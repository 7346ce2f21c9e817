from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from drivers.modbus.driver import ModbusConfig, ModbusDriver
from tests.drivers.harness import Harness, run_drivers


def modbus_config(**kw: Any) -> ModbusConfig:
    return ModbusConfig.model_validate({"type": "modbus", **kw})


@asynccontextmanager
async def running(*configs: ModbusConfig) -> AsyncIterator[Harness]:
    async with run_drivers(*(ModbusDriver(cfg) for cfg in configs)) as h:
        yield h
