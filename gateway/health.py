"""Health and metrics over HTTP: /healthz, /readyz and /metrics (Prometheus text format).

Bound to localhost by default: the node's state is for the people and the Prometheus on
the box or at the end of an SSH tunnel, not for the street.

- ``/healthz``: 200 while the node works; 503 once a core component has given up (the
  process is about to exit).
- ``/readyz``: 200 when every component has started and the core ones run; a failing
  driver does not make the node unready, but it is listed under ``failing`` with its
  error and since when (``degraded: true``).
- ``/metrics``: read from the node's parts at scrape time (gateway/metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from gateway.kernel.backoff import backoff
from gateway.kernel.component import ComponentState, Ready
from gateway.metrics import MetricSource, SourcesCollector
from gateway.nodestate import Readiness

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HealthServer:
    """Component serving the health and metrics endpoints."""

    name = "http"

    def __init__(
        self,
        state: Readiness,
        metrics: Sequence[MetricSource] = (),
        host: str = "127.0.0.1",
        port: int = 9102,
        load: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.state = state
        self.load = load  # the overload detail for /readyz
        self.host = host
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SourcesCollector(metrics))

    async def healthz(self, _request: web.Request) -> web.Response:
        states = self.state.component_states()
        failed = [c.name for c in states if c.state is ComponentState.FAILED]
        status = 503 if failed else 200
        return web.json_response(
            {"status": "ok" if not failed else "failed", "failed": failed}, status=status
        )

    async def readyz(self, _request: web.Request) -> web.Response:
        states = self.state.component_states()
        waiting = [
            c.name
            for c in states
            if c.state not in (ComponentState.RUNNING, ComponentState.STOPPED)
        ]
        failing = [c.to_dict() for c in states if c.failing]
        ready = self.state.is_ready()
        return web.json_response(
            {
                "ready": ready,
                "degraded": bool(failing),
                "components": {c.name: c.state.value for c in states},
                "not_running": waiting,
                "failing": failing,
                **({"overload": self.load()} if self.load is not None else {}),
            },
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
                    await asyncio.sleep(backoff(failures, first=5.0, cap=60.0))
                    continue
                logger.info("health and metrics on http://%s:%d/", self.host, self.port)
                await asyncio.Event().wait()
        finally:
            await runner.cleanup()
