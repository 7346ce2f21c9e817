"""Finding drivers: the built-in ones and vendor plugins from entry points.

Plugins register under the entry-point group ``cityneuron.drivers``; each entry point
names a `drivers.api.Driver` subclass. A plugin that fails to import, is not a driver,
declares an incompatible API version or reuses a taken type is reported and skipped;
it never stops the node. (Decoder plugins are found by models.plugins.)
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import get_args

from drivers.api import API_VERSION, Driver, DriverConfig, compatible
from gateway.kernel.plugins import PluginFailure, load_group

logger = logging.getLogger(__name__)

DRIVER_GROUP = "cityneuron.drivers"

# type -> "module:Class"; imported lazily so that e.g. OpenCV loads only with a camera
BUILTIN_DRIVERS: dict[str, str] = {
    "modbus": "drivers.modbus.driver:ModbusDriver",
    "serial": "drivers.serial.driver:SerialDriver",
    "camera": "drivers.camera.driver:CameraDriver",
}

# modules that driver API 1.x plugins imported and 2.0 no longer offers
_API1_MODULES = ("gateway.records", "gateway.clock", "gateway.cancel", "gateway.geo")


@dataclass
class DriverRegistry:
    """The drivers available on this node, by type, and the plugins that failed."""

    drivers: dict[str, type[Driver]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    def config_models(self) -> list[type[DriverConfig]]:
        return [d.config_model for d in self.drivers.values()]

    def unmet(self, driver_type: str) -> str | None:
        """What driver `driver_type` needs that this node lacks, with how to get it."""
        driver = self.drivers.get(driver_type)
        if driver is None:
            return None
        missing = driver.missing_modules()
        if not missing:
            return None
        hint = f"; {driver.install_hint}" if driver.install_hint else ""
        return f"driver {driver_type!r} needs {', '.join(missing)}, not installed here{hint}"

    def add(self, driver: object, source: str, name: str) -> None:
        reason = _check(driver, name)
        if reason is None:
            assert isinstance(driver, type)
            assert issubclass(driver, Driver)
            if driver.type in self.drivers:
                reason = (
                    f"driver type {driver.type!r} is already provided by "
                    f"{self.origins[driver.type]}"
                )
            else:
                self.drivers[driver.type] = driver
                self.origins[driver.type] = source
                return
        self.fail(PluginFailure(name=name, source=source, reason=reason))

    def fail(self, failure: PluginFailure) -> None:
        logger.error(
            "driver plugin %s (%s) skipped: %s", failure.name, failure.source, failure.reason
        )
        self.failures.append(failure)


def _check(driver: object, name: str) -> str | None:
    if not (isinstance(driver, type) and issubclass(driver, Driver)):
        return f"{driver!r} is not a subclass of drivers.api.Driver"
    if not isinstance(getattr(driver, "type", None), str):
        return "the class has no 'type' string"
    model = getattr(driver, "config_model", None)
    if not (isinstance(model, type) and issubclass(model, DriverConfig)):
        return "config_model is not a subclass of drivers.api.DriverConfig"
    tag = get_args(model.model_fields["type"].annotation)
    if tag != (driver.type,):
        return (
            f"config_model.type must be annotated Literal[{driver.type!r}] "
            f"(found {model.model_fields['type'].annotation!r})"
        )
    if not compatible(str(driver.api_version)):
        hint = ""
        if str(driver.api_version).startswith("1."):
            hint = " (update the plugin: since 2.0 drivers import only drivers.api)"
        return f"written for driver API {driver.api_version}, this node offers {API_VERSION}{hint}"
    if name != driver.type:
        logger.debug("entry point %s provides driver type %s", name, driver.type)
    return None


def _import(target: str) -> object:
    module_name, _, attr = target.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_drivers(*, plugins: bool = True) -> DriverRegistry:
    """The built-in drivers and, unless `plugins` is false, the installed plugins."""
    registry = DriverRegistry()
    for type_name, target in BUILTIN_DRIVERS.items():
        try:
            registry.add(_import(target), "built-in", type_name)
        except ImportError as exc:
            reason = f"import failed: {exc}"
            registry.failures.append(PluginFailure(type_name, "built-in", reason))
            logger.exception("built-in driver %s failed to load", type_name)
    if plugins:
        for item in load_group(DRIVER_GROUP):
            if isinstance(item, PluginFailure):
                reason = item.reason
                if any(m in reason for m in _API1_MODULES):
                    reason += (
                        " (a driver API 1.x plugin: since 2.0 drivers import only drivers.api;"
                        " see docs/driver-sdk.md)"
                    )
                registry.fail(PluginFailure(item.name, item.source, reason))
                continue
            registry.add(item.obj, item.source, item.name)
    return registry
