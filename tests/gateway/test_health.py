"""/healthz, /readyz and /metrics over real HTTP, and their counters moving."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from firmware_sim.broker import MosquittoBroker, free_port
from gateway.app import Gateway
from gateway.config import (
    HttpSection,
    MqttSection,
    NodeConfig,
    NodeSection,
    OutboxSection,
    TlsSection,
)
from gateway.plugins import DriverRegistry
from tests.helpers import CounterConfig, CounterDriver


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_endpoints_and_counters(tmp_path: Path, broker: MosquittoBroker) -> None:
    port = free_port()
    registry = DriverRegistry()
    registry.add(CounterDriver, "tests", "counter")
    config = NodeConfig(
        node=NodeSection(id="n1", data_dir=tmp_path),
        mqtt=MqttSection(host=broker.host, port=broker.port, tls=TlsSection(enabled=False)),
        outbox=OutboxSection(commit_interval=0.01),
        http=HttpSection(port=port),
        devices=[CounterConfig(type="counter", id="c1", interval=0.01)],
    )
    gw = Gateway(config, registry=registry)
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http, asyncio.TaskGroup() as tg:
        tg.create_task(gw.run(handle_signals=False), name="gateway")
        await asyncio.wait_for(gw.ready.wait(), 10)
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200
            assert (await r.json())["status"] == "ok"
        async with http.get(f"{base}/readyz") as r:
            body = await r.json()
            assert r.status == 200, body
            assert body["components"]["driver[c1]"] == "running"
        async with http.get(f"{base}/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            first = samples(await r.text())
        await asyncio.sleep(0.5)
        async with http.get(f"{base}/metrics") as r:
            second = samples(await r.text())
        gw.request_stop()
    readings = ("cityneuron_device_readings_total", (("device", "c1"),))
    assert second[readings] > first[readings] > 0
    sent = ("cityneuron_outbox_sent_total", ())
    assert second[sent] > first[sent]
    assert second[("cityneuron_uplink_connected", ())] == 1
    assert second[("cityneuron_device_online", (("device", "c1"), ("driver", "counter")))] == 1
    assert second[("cityneuron_component_up", (("component", "uplink"),))] == 1
    assert ("cityneuron_info", (("node", "n1"), ("version", "0.1.0"))) in second
    assert second[("cityneuron_outbox_evicted_total", (("class", "telemetry"),))] == 0


async def test_a_taken_port_does_not_stop_the_node(tmp_path: Path) -> None:
    port = free_port()
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
    try:
        config = NodeConfig(
            node=NodeSection(id="n1", data_dir=tmp_path), http=HttpSection(port=port)
        )
        gw = Gateway(config)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(gw.run(handle_signals=False), name="gateway")
            await asyncio.wait_for(gw.ready.wait(), 10)
            await asyncio.sleep(0.2)
            assert all(s.failures == 0 for s in gw.supervisors)
            gw.request_stop()
    finally:
        blocker.close()
        await blocker.wait_closed()
