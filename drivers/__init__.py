"""Driver API, conformance test kit and the built-in drivers (modbus, serial, camera)."""

from drivers.api import (
    API_VERSION,
    Driver,
    DriverConfig,
    DriverContext,
    DriverError,
    WriteError,
    compatible,
)

__all__ = [
    "API_VERSION",
    "Driver",
    "DriverConfig",
    "DriverContext",
    "DriverError",
    "WriteError",
    "compatible",
]
