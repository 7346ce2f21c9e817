"""cityneuron gateway: the daemon of a city neuron node."""

from gateway.bus import Bus, DropPolicy, Subscription
from gateway.clock import Clock, SystemClock
from gateway.config import ConfigError, NodeConfig, load_config
from gateway.records import Detection, Event, Quality, Reading, Record, Severity, new_id

__version__ = "0.1.0"

__all__ = [
    "Bus",
    "Clock",
    "ConfigError",
    "Detection",
    "DropPolicy",
    "Event",
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
