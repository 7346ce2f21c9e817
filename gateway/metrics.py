"""Prometheus metrics of the node, read from its parts at scrape time (nothing is counted
twice). Each function yields the metric families of one part; the node registers one
source per part it has (gateway/app.py), and health.py serves them."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from gateway.kernel.component import ComponentState

if TYPE_CHECKING:
    from gateway.bus import Bus
    from gateway.devices import DriverComponent
    from gateway.inspection import InspectionService
    from gateway.nodestate import Readiness
    from gateway.outbox import Outbox
    from gateway.uplink import Uplink
    from models.registry import ModelRegistry
    from rules.engine import RuleEngine

MetricSource = Callable[[], Iterable[Metric]]

CLASSES = ("alarm", "event", "telemetry")


class SourcesCollector(Collector):
    """A Prometheus collector reading the given sources when scraped (the list itself:
    sources added to it later are read too)."""

    def __init__(self, sources: Sequence[MetricSource]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source()


def node_metrics(node: str, version: str, state: Readiness) -> Iterator[Metric]:
    info = GaugeMetricFamily("cityneuron_info", "Node and software", labels=["node", "version"])
    info.add_metric([node, version], 1)
    yield info
    up = GaugeMetricFamily("cityneuron_component_up", "1 when running", labels=["component"])
    restarts = CounterMetricFamily(
        "cityneuron_component_restarts", "Restarts after failures", labels=["component"]
    )
    failing = GaugeMetricFamily(
        "cityneuron_component_failing", "1 while failing", labels=["component"]
    )
    for c in state.component_states():
        up.add_metric([c.name], 1.0 if c.state is ComponentState.RUNNING else 0.0)
        restarts.add_metric([c.name], c.restarts)
        failing.add_metric([c.name], 1.0 if c.failing else 0.0)
    yield from (up, restarts, failing)


def driver_metrics(drivers: Mapping[str, DriverComponent]) -> Iterator[Metric]:
    online = GaugeMetricFamily(
        "cityneuron_device_online", "1 online, 0 offline, NaN unknown", labels=["device", "driver"]
    )
    readings = CounterMetricFamily(
        "cityneuron_device_readings", "Readings published", labels=["device"]
    )
    polls = CounterMetricFamily("cityneuron_driver_polls", "Polls", labels=["device"])
    skipped = CounterMetricFamily(
        "cityneuron_driver_skipped_polls",
        "Poll slots skipped because the previous poll ran past them (the node is behind)",
        labels=["device"],
    )
    lag = GaugeMetricFamily(
        "cityneuron_driver_poll_lag_seconds", "How late polls start (smoothed)", labels=["device"]
    )
    errors = CounterMetricFamily("cityneuron_driver_errors", "Failed polls", labels=["device"])
    malformed = CounterMetricFamily(
        "cityneuron_driver_malformed_answers",
        "Answers that were not what was asked (short, long, undecodable)",
        labels=["device"],
    )
    rejected = CounterMetricFamily(
        "cityneuron_driver_rejected_frames", "Frames rejected", labels=["device", "reason"]
    )
    cameras: dict[str, dict[str, Any]] = {}
    for device_id, comp in drivers.items():
        state = comp.ctx.online
        online.add_metric(
            [device_id, comp.driver.type], math.nan if state is None else float(state)
        )
        readings.add_metric([device_id], comp.ctx.published)
        driver: Any = comp.driver
        if hasattr(driver, "polls"):
            polls.add_metric([device_id], driver.polls)
            errors.add_metric([device_id], driver.errors)
        if hasattr(driver, "skipped_polls"):
            skipped.add_metric([device_id], driver.skipped_polls)
            lag.add_metric([device_id], driver.poll_lag)
        if hasattr(driver, "malformed"):
            malformed.add_metric([device_id], driver.malformed)
        for reason, n in getattr(driver, "rejected", {}).items():
            rejected.add_metric([device_id, reason], n)
        if callable(stats := getattr(driver, "camera_stats", None)):
            cameras[device_id] = stats()
    yield from (online, readings, polls, errors, skipped, lag, malformed, rejected)
    if cameras:
        for key in next(iter(cameras.values())):
            family = CounterMetricFamily(
                f"cityneuron_camera_{key}", f"Camera {key.replace('_', ' ')}", labels=["camera"]
            )
            for device_id, stats in cameras.items():
                family.add_metric([device_id], stats[key])
            yield family


def outbox_metrics(outbox: Outbox) -> Iterator[Metric]:
    stats = outbox.stats
    depth = GaugeMetricFamily("cityneuron_outbox_messages", "Messages waiting", labels=["class"])
    for cls in CLASSES:
        depth.add_metric([cls], stats.by_priority.get(cls, 0))
    yield depth
    yield GaugeMetricFamily("cityneuron_outbox_bytes", "Bytes stored", value=stats.bytes)
    yield CounterMetricFamily(
        "cityneuron_outbox_accepted", "Records made durable", value=stats.accepted
    )
    yield CounterMetricFamily(
        "cityneuron_outbox_sent", "Messages acknowledged by the broker", value=stats.sent
    )
    yield CounterMetricFamily(
        "cityneuron_outbox_delivered",
        "Records in messages acknowledged by the broker",
        value=stats.delivered,
    )
    for name, counts in (("evicted", stats.evicted), ("expired", stats.expired)):
        family = CounterMetricFamily(
            f"cityneuron_outbox_{name}", f"Records {name}", labels=["class"]
        )
        for cls in CLASSES:
            family.add_metric([cls], counts.get(cls, 0))
        yield family


def uplink_metrics(uplink: Uplink) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "cityneuron_uplink_connected",
        "1 when connected to the broker",
        value=1.0 if uplink.connected.is_set() else 0.0,
    )
    yield CounterMetricFamily(
        "cityneuron_uplink_connects", "Connections made", value=uplink.connects
    )
    yield CounterMetricFamily(
        "cityneuron_uplink_published", "Messages published", value=uplink.published
    )
    yield GaugeMetricFamily("cityneuron_uplink_inflight", "Awaiting PUBACK", value=uplink.inflight)


def bus_metrics(bus: Bus) -> Iterator[Metric]:
    dropped = CounterMetricFamily(
        "cityneuron_bus_dropped", "Records a slow consumer lost", labels=["consumer"]
    )
    queued = GaugeMetricFamily("cityneuron_bus_queued", "Records queued", labels=["consumer"])
    for sub in bus.stats():
        dropped.add_metric([sub.name], sub.dropped)
        queued.add_metric([sub.name], sub.depth)
    yield dropped
    yield queued


def rule_metrics(rules: RuleEngine) -> Iterator[Metric]:
    st = rules.stats
    yield GaugeMetricFamily(
        "cityneuron_rules_version", "Running bundle version (0: none)", value=rules.version or 0
    )
    for name, value, doc in (
        ("evaluations", st.evaluations, "Rule evaluations"),
        ("fired", st.fired, "Rules fired"),
        ("cleared", st.cleared, "Alarms cleared"),
        ("errors", st.errors, "Evaluation errors"),
        ("missing_data", st.missing, "Evaluations lacking data"),
        ("disabled", st.disabled, "Rules disabled for running over the time budget"),
    ):
        yield CounterMetricFamily(f"cityneuron_rule_{name}", doc, value=value)
    yield GaugeMetricFamily(
        "cityneuron_rules_disabled", "Rules of the running bundle now disabled", len(rules.disabled)
    )


def model_metrics(models: ModelRegistry) -> Iterator[Metric]:
    latency = SummaryMetricFamily(
        "cityneuron_model_inference_seconds", "Inference time", labels=["model"]
    )
    hung = CounterMetricFamily("cityneuron_model_hung", "Hung inferences", labels=["model"])
    loaded = GaugeMetricFamily("cityneuron_model_loaded", "1 when loaded", labels=["model"])
    for name in models.packages:
        model = models.models.get(name)
        loaded.add_metric([name], 0.0 if model is None else 1.0)
        if model is not None:
            latency.add_metric([name], model.inferences, model.total_seconds)
            hung.add_metric([name], model.hung)
    yield from (loaded, latency, hung)


def inspection_metrics(inspection: InspectionService) -> Iterator[Metric]:
    for key, value in inspection.status().items():
        kind = GaugeMetricFamily if key in ("defects", "open_tracks") else CounterMetricFamily
        yield kind(
            f"cityneuron_inspection_{key}",
            f"Road inspection: {key.replace('_', ' ')}",
            value=value,
        )
