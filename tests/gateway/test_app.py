from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config import NodeConfig, NodeSection
from gateway.kernel.records import Event, Reading
from gateway.plugins import DriverRegistry
from gateway.supervisor import ComponentGaveUp, RestartPolicy
from tests.helpers import CounterConfig, CounterDriver, GaugeConfig, GaugeDriver, Recorder


def registry() -> DriverRegistry:
    reg = DriverRegistry()
    reg.add(CounterDriver, "tests", "counter")
    reg.add(GaugeDriver, "tests", "gauge")
    return reg


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def node(*devices: CounterConfig | GaugeConfig) -> NodeConfig:
    """A node without uplink whose state lives in the test's directory."""
    return NodeConfig(node=NodeSection(id="n1", data_dir=Path("data")), devices=list(devices))


async def test_components_start_in_order_and_stop_in_reverse() -> None:
    journal: list[str] = []
    parts = [Recorder(n, journal) for n in ("outbox", "uplink", "rules")]
    gw = Gateway(node(), registry=registry(), extra_components=parts)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gw.run(handle_signals=False), name="gateway")
        await asyncio.wait_for(gw.ready.wait(), 5)
        assert journal == ["start outbox", "start uplink", "start rules"]
        gw.request_stop()
    assert journal[3:] == ["stop rules", "stop uplink", "stop outbox"]
    assert not gw.ready.is_set()


async def test_device_readings_reach_the_bus_with_node_id_and_state_event() -> None:
    gw = Gateway(
        node(CounterConfig(type="counter", id="c1"), GaugeConfig(type="gauge", id="g1", level=3)),
        registry=registry(),
    )
    with gw.bus.subscribe("test", maxsize=10_000) as sub:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(gw.run(handle_signals=False), name="gateway")
            seen: list[object] = []
            while not (
                any(isinstance(r, Reading) and r.device == "g1" for r in seen)
                and sum(isinstance(r, Reading) and r.device == "c1" for r in seen) >= 3
            ):
                seen.append(await asyncio.wait_for(sub.get(), 5))
            gw.request_stop()
    readings = [r for r in seen if isinstance(r, Reading)]
    assert all(r.node == "n1" for r in readings)
    counts = [r.value for r in readings if r.device == "c1"]
    assert counts[:3] == [0, 1, 2]
    online = [r for r in seen if isinstance(r, Event) and r.kind == "device.online"]
    assert [e.source for e in online] == ["c1"]


async def test_disabled_device_does_not_run() -> None:
    gw = Gateway(node(CounterConfig(type="counter", id="c1", enabled=False)), registry=registry())
    assert gw.drivers == {}
    # the LAN announcement starts last: its probing must not delay the devices
    assert [c.name for c in gw.components] == ["http", "outbox", "load", "rules", "discovery"]
    enabled = Gateway(node(CounterConfig(type="counter", id="c1")), registry=registry())
    assert [c.name for c in enabled.components][-2:] == ["driver[c1]", "discovery"]


async def test_a_component_that_keeps_failing_stops_the_gateway_with_the_reason() -> None:
    journal: list[str] = []
    healthy = Recorder("outbox", journal)
    broken = Recorder("uplink", journal, fail_times=1_000)
    gw = Gateway(
        node(),
        registry=registry(),
        extra_components=[healthy, broken],
        restart_policy=RestartPolicy(base_delay=0.001, burst=3),
    )
    with pytest.raises(ExceptionGroup) as info:
        await asyncio.wait_for(gw.run(handle_signals=False), 10)
    assert info.group_contains(ComponentGaveUp)
    assert broken.runs == 3
    # the healthy component was cancelled and cleaned up, not left running
    assert journal == ["start outbox", "stop outbox"]


async def test_a_flaky_component_recovers_and_the_others_keep_running() -> None:
    journal: list[str] = []
    flaky = Recorder("uplink", journal, fail_times=2)
    gw = Gateway(
        node(),
        registry=registry(),
        extra_components=[Recorder("outbox", journal), flaky],
        restart_policy=RestartPolicy(base_delay=0.001, burst=5),
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gw.run(handle_signals=False), name="gateway")
        await asyncio.wait_for(gw.ready.wait(), 5)
        assert flaky.runs == 3
        assert [s.restarts for s in gw.supervisors] == [0, 0, 0, 0, 0, 0, 2]
        gw.request_stop()
    assert journal == ["start outbox", "start uplink", "stop uplink", "stop outbox"]


async def test_stop_during_start_up_is_prompt() -> None:
    class NeverReady:
        name = "slow"

        async def run(self, ready: object) -> None:
            await asyncio.Event().wait()

    gw = Gateway(node(), registry=registry(), extra_components=[NeverReady()], start_timeout=60)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(gw.run(handle_signals=False), name="gateway")
        await asyncio.sleep(0.05)
        gw.request_stop()
        await asyncio.wait_for(task, 2)
