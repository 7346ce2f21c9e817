"""Finding drivers: the built-in ones and vendor plugins from entry points.

Plugins register under the entry-point group ``cityneuron.drivers``; each entry point
names a `drivers.api.Driver` subclass. A plugin that fails to import, is not a driver,
declares an incompatible API version or reuses a taken type is reported and skipped;
it never stops the node.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import get_args

from drivers.api import API_VERSION, Driver, DriverConfig, compatible
from models.api import DECODER_API_VERSION

logger = logging.getLogger(__name__)

DRIVER_GROUP = "cityneuron.drivers"
DECODER_GROUP = "cityneuron.models.decoders"

# type -> "module:Class"; imported lazily so that e.g. OpenCV loads only with a camera
BUILTIN_DRIVERS: dict[str, str] = {
    "modbus": "drivers.modbus.driver:ModbusDriver",
    "serial": "drivers.serial.driver:SerialDriver",
    "camera": "drivers.camera.driver:CameraDriver",
}


@dataclass(frozen=True, slots=True)
class PluginFailure:
    """A driver that could not be loaded, and why."""

    name: str
    source: str
    reason: str


@dataclass
class DriverRegistry:
    """The drivers available on this node, by type, and the plugins that failed."""

    drivers: dict[str, type[Driver]] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    def config_models(self) -> list[type[DriverConfig]]:
        return [d.config_model for d in self.drivers.values()]

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
        logger.error("driver plugin %s (%s) skipped: %s", name, source, reason)
        self.failures.append(PluginFailure(name=name, source=source, reason=reason))


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
        return f"written for driver API {driver.api_version}, this gateway offers {API_VERSION}"
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
        except Exception as exc:
            registry.failures.append(PluginFailure(type_name, "built-in", repr(exc)))
            logger.exception("built-in driver %s failed to load", type_name)
    if plugins:
        for ep in entry_points(group=DRIVER_GROUP):
            source = f"{ep.dist.name if ep.dist else '?'} ({ep.value})"
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the node
                reason = f"import failed: {type(exc).__name__}: {exc}"
                logger.error("driver plugin %s (%s) skipped: %s", ep.name, source, reason)  # noqa: TRY400
                registry.failures.append(PluginFailure(ep.name, source, reason))
                continue
            registry.add(obj, source, ep.name)
    return registry


def load_decoders() -> tuple[dict[str, str], list[PluginFailure]]:
    """Custom model output decoders from plugins: name -> origin, and failures.

    A decoder is a callable with a compatible ``api_version`` (models/api.py); anything
    else, or an import error, is reported and skipped.
    """
    found: dict[str, str] = {}
    failures: list[PluginFailure] = []
    for ep in entry_points(group=DECODER_GROUP):
        source = f"{ep.dist.name if ep.dist else '?'} ({ep.value})"
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the node
            failures.append(PluginFailure(ep.name, source, f"import failed: {exc!r}"))
            continue
        if not callable(obj):
            failures.append(PluginFailure(ep.name, source, f"{obj!r} is not callable"))
            continue
        version = getattr(obj, "api_version", None)
        if not isinstance(version, str) or not compatible(version, DECODER_API_VERSION):
            failures.append(
                PluginFailure(
                    ep.name,
                    source,
                    f"written for decoder API {version}, this gateway offers {DECODER_API_VERSION}",
                )
            )
            continue
        found[ep.name] = source
    for failure in failures:
        logger.error(
            "decoder plugin %s (%s) skipped: %s", failure.name, failure.source, failure.reason
        )
    return found, failures
