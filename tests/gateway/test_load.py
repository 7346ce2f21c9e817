"""Overload: a node that cannot serve a device at its rate says so once, names it, polls
it less often instead of piling up requests, and says when it keeps up again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from drivers.modbus.driver import ModbusConfig
from drivers.modbus.profile import load_profile
from firmware_sim.broker import free_port
from firmware_sim.city import RiverGauge
from firmware_sim.modbus import ModbusSimServer, SimSlave
from gateway.app import Gateway
from gateway.bus import Bus
from gateway.config import HttpSection, NodeConfig, NodeSection, RulesSection
from gateway.kernel.records import Event
from gateway.load import MAX_PACE, LoadMonitor
from rules.bundle import parse_bundle
from rules.compiler import compile_bundle
from rules.engine import RuleEngine


def device(name: str, port: int) -> ModbusConfig:
    return ModbusConfig.model_validate({
        "type": "modbus", "id": name, "profile": "river_level", "unit": 1,
        "connection": {"kind": "tcp", "host": "127.0.0.1", "port": port},
        "poll_interval": 0.05, "timeout": 2,
    })  # fmt: skip


async def test_a_device_that_cannot_keep_its_rate_is_reported_once_then_cleared(
    tmp_path: Path,
) -> None:
    slow = SimSlave(unit=1, profile=load_profile("river_level"), sensor=RiverGauge(), delay=0.2)
    fast = SimSlave(unit=1, profile=load_profile("river_level"), sensor=RiverGauge())
    port = free_port()
    async with ModbusSimServer([slow]) as s1, ModbusSimServer([fast]) as s2:
        config = NodeConfig(
            node=NodeSection(id="n1", data_dir=tmp_path),
            http=HttpSection(port=port),
            devices=[device("slow", s1.port), device("fast", s2.port)],
        )
        gw = Gateway(config)
        gw.load.check, gw.load.calm = 0.3, 0.6
        base = f"http://127.0.0.1:{port}"
        with gw.bus.subscribe("test", maxsize=100_000, kinds=(Event,)) as sub:
            async with aiohttp.ClientSession() as http, asyncio.TaskGroup() as tg:
                tg.create_task(gw.run(handle_signals=False), name="gateway")
                await asyncio.wait_for(gw.ready.wait(), 10)

                async def readyz() -> dict[str, object]:
                    async with http.get(f"{base}/readyz") as r:
                        body: dict[str, object] = await r.json()
                        assert r.status == 200, body  # an overloaded node is still ready
                        return body

                async def until(kind: str) -> Event:
                    while True:
                        record = await asyncio.wait_for(sub.get(), 10)
                        if isinstance(record, Event) and record.kind == kind:
                            return record

                raised = await until("node.overload")
                during = (await readyz())["overload"]
                polls_fast = gw.drivers["fast"].driver.polls  # type: ignore[attr-defined]
                slow.delay = 0.0
                cleared = await until("node.overload_cleared")
                after = (await readyz())["overload"]
                async with http.get(f"{base}/metrics") as r:
                    metrics = {
                        (s.name, tuple(sorted(s.labels.items()))): s.value
                        for family in text_string_to_metric_families(await r.text())
                        for s in family.samples
                    }
                await asyncio.sleep(0.5)
                overloads = [e for e in gw_events(sub) if e.kind == "node.overload"]
                gw.request_stop()
    assert [x["device"] for x in raised.data["late"]] == ["slow"]  # the healthy one is fine
    assert raised.data["late"][0]["lag_s"] >= 0 and raised.data["late"][0]["skipped"] > 0
    assert "slow" in raised.message and "cannot keep up" in raised.message
    assert isinstance(during, dict) and during["overloaded"] is True
    assert during["late_devices"] == 1
    assert cleared.data["overloaded"] is False
    assert isinstance(after, dict) and after["overloaded"] is False
    assert overloads == []  # said once: no second event while it lasted
    assert polls_fast > 20  # the other device kept its rate meanwhile
    skipped = "cityneuron_driver_skipped_polls_total"
    assert metrics[(skipped, (("device", "slow"),))] > 0
    assert metrics[(skipped, (("device", "fast"),))] == 0
    assert metrics[("cityneuron_overloaded", ())] == 0
    assert metrics[("cityneuron_overload_episodes_total", ())] == 1
    assert ("cityneuron_event_loop_lag_seconds", ()) in metrics


def gw_events(sub: object) -> list[Event]:
    out = []
    while (record := sub.get_nowait()) is not None:  # type: ignore[attr-defined]
        if isinstance(record, Event):
            out.append(record)
    return out


async def test_a_blocked_event_loop_is_measured_and_reported() -> None:
    bus = Bus()
    monitor = LoadMonitor(
        bus, dict, node="n1", tick=0.02, check=0.3, adjust=0.1, calm=0.3, loop_lag_limit=0.05
    )
    with bus.subscribe("test", maxsize=100) as sub:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(monitor.run(lambda: None), name="test.load")
            await asyncio.sleep(0.1)
            quiet = monitor.loop_lag
            for _ in range(8):  # a blocking call on the loop, as a bug would make
                time.sleep(0.15)  # noqa: ASYNC251 - exactly what is measured here
                await asyncio.sleep(0)
            event = await asyncio.wait_for(sub.get(), 5)
            slowed = monitor.pace
            cleared = await asyncio.wait_for(sub.get(), 10)  # the loop is quick again
            task.cancel()
    assert slowed > 1.0  # polling drivers were asked to wait longer
    assert isinstance(cleared, Event) and cleared.kind == "node.overload_cleared"
    assert monitor.pace == 1.0  # and back to their configured rate
    assert quiet < 0.05
    assert isinstance(event, Event) and event.kind == "node.overload"
    assert event.data["loop_lag_ms"] > 50 and event.data["late_devices"] == 0
    assert event.data["loop_lag_max_ms"] >= 100


async def test_under_pressure_devices_an_alarm_reads_are_slowed_last() -> None:
    rules = RuleEngine(node="n1")
    rules.swap(compile_bundle(parse_bundle(
        "version: 1\nname: t\nrules:\n"
        "  - id: flood\n    devices: [river-*]\n    when: level > 2\n    alarm: {kind: flood}\n"
        "  - id: note\n    devices: [dust-*]\n    when: pm25 > 50\n    event: {kind: dusty}\n"
    )))  # fmt: skip
    bus = Bus()
    monitor = LoadMonitor(
        bus, dict, node="n1", tick=0.01, check=60, adjust=0.01, calm=60, loop_lag_limit=0.05
    )
    monitor.guarded, monitor.pace_lag = rules.guards, 0.01
    seen: list[tuple[float, float, float]] = []  # (other, dust, river) paces
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(monitor.run(lambda: None), name="test.load")
        for _ in range(200):  # a loop blocked again and again, until polling is at its slowest
            time.sleep(0.05)  # noqa: ASYNC251 - the overload this test is about
            await asyncio.sleep(0.011)
            seen.append((monitor.pace_of("pump-1"), monitor.pace_of("dust-1"),
                         monitor.pace_of("river-1")))  # fmt: skip
            if seen[-1][2] >= MAX_PACE:
                break
        task.cancel()
    # a device only an event rule reads is slowed like any other
    assert all(other == dust for other, dust, _ in seen)
    # the alarm device kept its rate while the others were slowed, up to their slowest
    assert any(1.0 < other < MAX_PACE for other, _, _ in seen)
    assert all(river == 1.0 for other, _, river in seen if other < MAX_PACE)
    # and only the pressure beyond that slowed it too, as far as the others at most
    assert seen[-1] == (MAX_PACE, MAX_PACE, MAX_PACE)
    assert any(1.0 < river < MAX_PACE for _, _, river in seen)


def test_a_node_slows_its_alarm_devices_last(tmp_path: Path) -> None:
    """Wiring: each driver's `ctx.pace` is its own device's, from the running bundle."""
    bundle = tmp_path / "rules.yaml"
    bundle.write_text(
        "version: 1\nname: t\nrules:\n"
        "  - id: flood\n    devices: [river]\n    when: level > 2\n    alarm: {kind: flood}\n",
        encoding="utf-8",
    )
    config = NodeConfig(
        node=NodeSection(id="n1", data_dir=tmp_path),
        http=HttpSection(enabled=False),
        rules=RulesSection(file=bundle),
        devices=[device("river", 1502), device("pump", 1503)],  # never started here
    )
    gw = Gateway(config)
    river, pump = gw.drivers["river"].ctx, gw.drivers["pump"].ctx
    assert (river.pace, pump.pace) == (1.0, 1.0)
    gw.load.pressure = 2 * MAX_PACE  # past every other device's slowest
    assert (river.pace, pump.pace) == (2.0, MAX_PACE)
