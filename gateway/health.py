"""Health and metrics over HTTP: /healthz, /readyz and /metrics (Prometheus text format).

Bound to localhost by default: the node's state is for the people and the Prometheus on
the box or at the end of an SSH tunnel, not for the street. Metrics are read from the
running components at scrape time; nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

import gateway
from gateway.supervisor import ComponentState, Ready

if TYPE_CHECKING:
    from gateway.app import Gateway

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayCollector(Collector):
    """Prometheus collector reading a gateway's counters when scraped."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def collect(self) -> Iterator[Metric]:  # noqa: PLR0915 - one metric family per block
        gw = self.gw
        node = gw.config.node.id
        info = GaugeMetricFamily("cityneuron_info", "Node and software", labels=["node", "version"])
        info.add_metric([node, gateway.__version__], 1)
        yield info

        up = GaugeMetricFamily("cityneuron_component_up", "1 when running", labels=["component"])
        restarts = CounterMetricFamily(
            "cityneuron_component_restarts", "Restarts after failures", labels=["component"]
        )
        for sup in gw.supervisors:
            up.add_metric([sup.name], 1.0 if sup.state is ComponentState.RUNNING else 0.0)
            restarts.add_metric([sup.name], sup.restarts)
        yield up
        yield restarts

        online = GaugeMetricFamily(
            "cityneuron_device_online",
            "1 online, 0 offline, NaN unknown",
            labels=["device", "driver"],
        )
        readings = CounterMetricFamily(
            "cityneuron_device_readings", "Readings published", labels=["device"]
        )
        polls = CounterMetricFamily("cityneuron_driver_polls", "Polls", labels=["device"])
        errors = CounterMetricFamily("cityneuron_driver_errors", "Failed polls", labels=["device"])
        rejected = CounterMetricFamily(
            "cityneuron_driver_rejected_frames", "Frames rejected", labels=["device", "reason"]
        )
        for device_id, comp in gw.drivers.items():
            state = comp.ctx.online
            online.add_metric(
                [device_id, comp.driver.type], math.nan if state is None else float(state)
            )
            readings.add_metric([device_id], comp.ctx.published)
            driver: Any = comp.driver
            if hasattr(driver, "polls"):
                polls.add_metric([device_id], driver.polls)
                errors.add_metric([device_id], driver.errors)
            for reason, n in getattr(driver, "rejected", {}).items():
                rejected.add_metric([device_id, reason], n)
        yield from (online, readings, polls, errors, rejected)
        yield from _camera_metrics(gw)

        if gw.outbox is not None:
            stats = gw.outbox.stats
            depth = GaugeMetricFamily(
                "cityneuron_outbox_messages", "Messages waiting", labels=["class"]
            )
            for cls in ("alarm", "event", "telemetry"):
                depth.add_metric([cls], stats.by_priority.get(cls, 0))
            yield depth
            yield GaugeMetricFamily("cityneuron_outbox_bytes", "Bytes stored", value=stats.bytes)
            yield CounterMetricFamily(
                "cityneuron_outbox_accepted", "Records made durable", value=stats.accepted
            )
            yield CounterMetricFamily(
                "cityneuron_outbox_sent", "Messages acknowledged by the broker", value=stats.sent
            )
            for name, counts in (("evicted", stats.evicted), ("expired", stats.expired)):
                family = CounterMetricFamily(
                    f"cityneuron_outbox_{name}", f"Records {name}", labels=["class"]
                )
                for cls in ("alarm", "event", "telemetry"):
                    family.add_metric([cls], counts.get(cls, 0))
                yield family

        if gw.uplink is not None:
            up_link = gw.uplink
            yield GaugeMetricFamily(
                "cityneuron_uplink_connected",
                "1 when connected to the broker",
                value=1.0 if up_link.connected.is_set() else 0.0,
            )
            yield CounterMetricFamily(
                "cityneuron_uplink_connects", "Connections made", value=up_link.connects
            )
            yield CounterMetricFamily(
                "cityneuron_uplink_published", "Messages published", value=up_link.published
            )
            yield GaugeMetricFamily(
                "cityneuron_uplink_inflight", "Awaiting PUBACK", value=up_link.inflight
            )

        dropped = CounterMetricFamily(
            "cityneuron_bus_dropped", "Records a slow consumer lost", labels=["consumer"]
        )
        queued = GaugeMetricFamily("cityneuron_bus_queued", "Records queued", labels=["consumer"])
        for sub in gw.bus.stats():
            dropped.add_metric([sub.name], sub.dropped)
            queued.add_metric([sub.name], sub.depth)
        yield dropped
        yield queued

        rules = gw.rules
        if rules is not None:
            st = rules.stats
            yield GaugeMetricFamily(
                "cityneuron_rules_version",
                "Running bundle version (0: none)",
                value=rules.version or 0,
            )
            for name, value, doc in (
                ("evaluations", st.evaluations, "Rule evaluations"),
                ("fired", st.fired, "Rules fired"),
                ("cleared", st.cleared, "Alarms cleared"),
                ("errors", st.errors, "Evaluation errors"),
                ("missing_data", st.missing, "Evaluations lacking data"),
            ):
                yield CounterMetricFamily(f"cityneuron_rule_{name}", doc, value=value)

        yield from gw.extra_metrics()


class HealthServer:
    """Component serving the health and metrics endpoints."""

    name = "http"

    def __init__(self, gw: Gateway, host: str = "127.0.0.1", port: int = 9102) -> None:
        self.gw = gw
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(gw))

    async def healthz(self, _request: web.Request) -> web.Response:
        failed = [s.name for s in self.gw.supervisors if s.state is ComponentState.FAILED]
        status = 503 if failed else 200
        return web.json_response(
            {"status": "ok" if not failed else "failed", "failed": failed}, status=status
        )

    async def readyz(self, _request: web.Request) -> web.Response:
        states = {s.name: s.state.value for s in self.gw.supervisors}
        waiting = [n for n, s in states.items() if s not in ("running", "stopped")]
        ready = self.gw.ready.is_set() and not waiting
        return web.json_response(
            {"ready": ready, "components": states, "not_running": waiting},
            status=200 if ready else 503,
        )

    async def metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def run(self, ready: Ready) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        ready()  # the node does not wait for its metrics endpoint
        try:
            failures = 0
            while True:
                try:
                    await web.TCPSite(runner, self.host, self.port).start()
                except OSError as exc:
                    # a taken port costs the node its metrics, not its work
                    if failures == 0:
                        logger.error(  # noqa: TRY400 - the reason, not a traceback
                            "health endpoint %s:%d unavailable: %s; retrying",
                            self.host,
                            self.port,
                            exc.strerror or exc,
                        )
                    failures += 1
                    await asyncio.sleep(min(60.0, 5.0 * failures))
                    continue
                logger.info("health and metrics on http://%s:%d/", self.host, self.port)
                await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def _camera_metrics(gw: Gateway) -> Iterator[Metric]:
    cameras = {
        device_id: stats()
        for device_id, comp in gw.drivers.items()
        if callable(stats := getattr(comp.driver, "camera_stats", None))
    }
    if cameras:
        for key in next(iter(cameras.values())):
            family = CounterMetricFamily(
                f"cityneuron_camera_{key}", f"Camera {key.replace('_', ' ')}", labels=["camera"]
            )
            for device_id, stats in cameras.items():
                family.add_metric([device_id], stats[key])
            yield family
    models = getattr(gw, "models", None)
    if models is not None:
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
    inspection = getattr(gw, "inspection", None)
    if inspection is not None:
        for key, value in inspection.status().items():
            kind = GaugeMetricFamily if key in ("defects", "open_tracks") else CounterMetricFamily
            yield kind(
                f"cityneuron_inspection_{key}",
                f"Road inspection: {key.replace('_', ' ')}",
                value=value,
            )
