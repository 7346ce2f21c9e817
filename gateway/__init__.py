"""cityneuron gateway: the daemon of a city neuron node.

Public names are re-exported here and imported on first use, so that importing one
module (for example ``gateway.kernel.clock`` from a driver) does not load the whole daemon.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Bus": "gateway.bus",
    "DropPolicy": "gateway.bus",
    "Subscription": "gateway.bus",
    "Clock": "gateway.kernel.clock",
    "SystemClock": "gateway.kernel.clock",
    "ConfigError": "gateway.config",
    "NodeConfig": "gateway.config",
    "load_config": "gateway.config",
    "Gateway": "gateway.app",
    "Detection": "gateway.kernel.records",
    "Event": "gateway.kernel.records",
    "Quality": "gateway.kernel.records",
    "Reading": "gateway.kernel.records",
    "Record": "gateway.kernel.records",
    "Severity": "gateway.kernel.records",
    "new_id": "gateway.kernel.records",
}

__all__ = [
    "Bus",
    "Clock",
    "ConfigError",
    "Detection",
    "DropPolicy",
    "Event",
    "Gateway",
    "NodeConfig",
    "Quality",
    "Reading",
    "Record",
    "Severity",
    "Subscription",
    "SystemClock",
    "__version__",
    "load_config",
    "new_id",
]

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.bus import Bus, DropPolicy, Subscription
    from gateway.config import ConfigError, NodeConfig, load_config
    from gateway.kernel.clock import Clock, SystemClock
    from gateway.kernel.records import Detection, Event, Quality, Reading, Record, Severity, new_id


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
