from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_sim.broker import MosquittoBroker
from gateway.app import Gateway
from gateway.config import MqttSection, NodeConfig, NodeSection, OutboxSection, TlsSection
from gateway.kernel.records import Event, Severity
from gateway.plugins import DriverRegistry
from gateway.supervisor import ComponentGaveUp, RestartPolicy
from tests.helpers import CounterConfig, CounterDriver
from tests.mqtt import collect, readings_of


def registry() -> DriverRegistry:
    reg = DriverRegistry()
    reg.add(CounterDriver, "tests", "counter")
    return reg


def config(
    tmp_path: Path,
    broker: MosquittoBroker,
    *devices: CounterConfig,
    protocol: str = "5",
    groups: tuple[str, ...] = (),
) -> NodeConfig:
    return NodeConfig(
        node=NodeSection(id="n1", data_dir=tmp_path / "data", groups=list(groups)),
        mqtt=MqttSection(
            host=broker.host,
            port=broker.port,
            protocol=protocol,  # type: ignore[arg-type]
            tls=TlsSection(enabled=False),
            keepalive=5,
        ),
        outbox=OutboxSection(commit_interval=0.01, batch_max=20),
        devices=list(devices),
    )


@asynccontextmanager
async def running(cfg: NodeConfig) -> AsyncIterator[Gateway]:
    gw = Gateway(cfg, registry=registry())
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gw.run(handle_signals=False), name="gateway")
        await asyncio.wait_for(gw.ready.wait(), 10)
        try:
            yield gw
        finally:
            gw.request_stop()


async def test_readings_arrive_upstream_with_ids_sequence_and_birth_status(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    cfg = config(tmp_path, broker, CounterConfig(type="counter", id="c1", interval=0.005))
    async with collect(broker, "cityneuron/v1/n1/#") as sub:
        async with running(cfg) as gw:
            await sub.wait(lambda: len(readings_of(sub, "c1")) >= 50)
            assert gw.uplink is not None and gw.uplink.connected.is_set()
        await sub.wait(lambda: any(m.json()["state"] == "offline" for m in sub.on("/status")))
    # (a retained status from an earlier test's node may come first: skip it)
    states = [m.json()["state"] for m in sub.on("/status") if not m.retain]
    assert states[0] == "online"
    assert states[-1] == "offline"
    msgs = [m.json() for m in sub.on("/telemetry/c1")]
    seqs = [m["seq"] for m in msgs]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert all(m["node"] == "n1" and m["device"] == "c1" for m in msgs)
    values = [r["value"] for r in readings_of(sub, "c1")]
    assert values[: len(values)] == list(range(len(values)))
    ids = [r["id"] for r in readings_of(sub, "c1")]
    assert len(set(ids)) == len(ids)
    assert all(m.properties.ContentType == "application/json" for m in sub.on("/telemetry/c1"))


async def test_status_is_retained_for_late_subscribers(
    tmp_path: Path, own_broker: MosquittoBroker
) -> None:
    cfg = config(tmp_path, own_broker)
    async with running(cfg) as gw:
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
        # a client connecting later still learns the node's state
        async with collect(own_broker, "cityneuron/v1/n1/status") as late:
            await late.wait(lambda: bool(late.messages))
            assert late.messages[0].retain
            assert late.messages[0].json()["state"] == "online"


async def test_broker_outage_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    limit = 300
    devices = [
        CounterConfig(type="counter", id=f"c{i}", interval=0.01, limit=limit) for i in range(3)
    ]
    with MosquittoBroker(workdir=tmp_path, persistence=True) as broker:
        cfg = config(tmp_path, broker, *devices)
        async with (
            collect(broker, "cityneuron/v1/n1/telemetry/#", persistent=True) as sub,
            running(cfg) as gw,
        ):
            assert gw.uplink is not None and gw.outbox is not None
            await sub.wait(lambda: len(readings_of(sub, "c0")) >= 20)
            broker.stop()
            await asyncio.sleep(1.5)  # the devices keep measuring meanwhile
            assert not gw.uplink.connected.is_set()
            backlog = gw.outbox.stats.messages
            broker.start()
            await sub.wait(
                lambda: all(
                    len({r["id"] for r in readings_of(sub, d.id)}) == limit for d in devices
                ),
                timeout=30,
            )
            assert gw.uplink.connects >= 2
    assert backlog > 0
    for device in devices:
        first_value: dict[str, object] = {}
        values = []
        for r in readings_of(sub, device.id):
            if r["id"] in first_value:
                # a QoS 1 redelivery: same id, same content
                assert first_value[r["id"]] == r["value"]
                continue
            first_value[r["id"]] = r["value"]
            values.append(r["value"])
        assert values == list(range(limit)), device.id


async def _command(
    broker: MosquittoBroker, topic: str, payload: bytes, *, v5: bool = True
) -> dict[str, object]:
    protocol = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    async with collect(broker, "test/replies/#", protocol=protocol) as sub:
        props = None
        if v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "test/replies/x"
            props.CorrelationData = b"corr-42"
        await sub.publish(topic, payload, properties=props)
        await sub.wait(lambda: bool(sub.messages))
        reply = sub.messages[0]
        if v5:
            assert reply.properties.CorrelationData == b"corr-42"
        result: dict[str, object] = reply.json()
        return result


async def test_commands_get_replies_on_the_response_topic(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    cfg = config(tmp_path, broker, groups=("district-5",))
    async with running(cfg) as gw:
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
        base = "cityneuron/v1/n1/cmd"
        reply = await _command(broker, f"{base}/ping", b'{"id": "c1", "args": {"echo": 7}}')
        assert reply["ok"] is True
        assert reply["command_id"] == "c1"
        assert reply["result"]["echo"] == 7  # type: ignore[index]

        fleet = await _command(broker, "cityneuron/v1/fleet/district-5/cmd/ping", b"{}")
        assert fleet["ok"] is True and fleet["node"] == "n1"

        bad = await _command(broker, f"{base}/ping", b"{not json")
        assert bad["ok"] is False
        assert bad["error"]["code"] == "malformed"  # type: ignore[index]

        unknown = await _command(broker, f"{base}/selfdestruct", b"{}")
        assert unknown["error"]["code"] == "unknown_command"  # type: ignore[index]

        # MQTT 5: the node announced its Maximum Packet Size, the broker keeps it away
        async with collect(broker, "test/replies/#") as sub:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "test/replies/big"
            await sub.publish(
                f"{base}/ping", b'{"args": {"x": "' + b"a" * 2_000_000 + b'"}}', properties=props
            )
            await asyncio.sleep(1.0)
            assert sub.on("test/replies/big") == []
        # a client of the broker's own size limit still gets a refusal (the node's check)
        big = await _command(
            broker, f"{base}/ping", b'{"args": {"x": "' + b"a" * 1_050_000 + b'"}}'
        )
        assert big["error"]["code"] == "too_large"  # type: ignore[index]

        write = await _command(
            broker, f"{base}/write", b'{"args": {"device": "nope", "point": "p", "value": 1}}'
        )
        # a write changes the node: unsigned, it is refused before anything looks at it
        assert write["error"]["code"] == "unauthorized"  # type: ignore[index]
        assert gw.commands.refused == 4


async def test_mqtt_311_commands_reply_to_the_topic_in_the_payload(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    cfg = config(tmp_path, broker, protocol="3.1.1")
    async with running(cfg) as gw:
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
        payload = json.dumps(
            {"id": "k1", "reply_to": "test/replies/311", "correlation_id": "abc"}
        ).encode()
        reply = await _command(broker, "cityneuron/v1/n1/cmd/ping", payload, v5=False)
    assert reply["ok"] is True
    assert reply["correlation_id"] == "abc"


@pytest.mark.parametrize("payload", [b"[]", b'{"args": 3}', b'{"id": 5}', b'{"colour": 1}'])
async def test_malformed_commands_are_refused(
    tmp_path: Path, broker: MosquittoBroker, payload: bytes
) -> None:
    cfg = config(tmp_path, broker)
    async with running(cfg) as gw:
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
        reply = await _command(broker, "cityneuron/v1/n1/cmd/ping", payload)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "malformed"  # type: ignore[index]


async def test_full_outbox_during_a_long_outage_keeps_alarms_and_reports_evictions(
    tmp_path: Path,
) -> None:
    limit = 4000
    devices = [
        CounterConfig(type="counter", id=f"c{i}", interval=0.0005, limit=limit) for i in range(4)
    ]
    broker = MosquittoBroker(workdir=tmp_path)  # not started yet: a long outage
    cfg = config(tmp_path, broker, *devices)
    cfg = cfg.model_copy(
        update={
            "outbox": OutboxSection(commit_interval=0.02, batch_max=50, max_bytes=1024 * 1024),
            "mqtt": cfg.mqtt.model_copy(update={"reconnect_max": 1.0}) if cfg.mqtt else None,
        }
    )
    try:
        async with running(cfg) as gw:
            assert gw.outbox is not None and gw.uplink is not None
            for n in range(10):
                await gw.bus.publish(
                    Event(
                        kind="alarm.flood",
                        source="river",
                        severity=Severity.CRITICAL,
                        data={"n": n},
                        node="n1",
                    )
                )
                await asyncio.sleep(0.05)
            # wait until every counter has finished producing into the full outbox
            while any(d.ctx.published < limit for d in gw.drivers.values()):
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.2)
            evicted = gw.outbox.stats.evicted.get("telemetry", 0)
            assert evicted > 0
            assert gw.outbox.stats.bytes <= 1024 * 1024
            broker.start()
            async with collect(broker, "cityneuron/v1/n1/#") as sub:
                await sub.wait(
                    lambda: (
                        gw.outbox.stats.messages == 0 and gw.uplink.inflight == 0
                        if gw.outbox and gw.uplink
                        else False
                    ),
                    timeout=60,
                )
            assert [s.state.value for s in gw.supervisors].count("running") == len(
                gw.supervisors
            ) - 4
    finally:
        broker.close()
    # the broker held retained status only; everything else came from the outbox drain
    alarms = [m.json()["data"]["n"] for m in sub.on("/events/alarm.flood")]
    assert sorted(alarms) == list(range(10))
    dropped = [m.json() for m in sub.on("/events/outbox.dropped")]
    assert dropped
    reported = sum(d["data"]["records"].get("telemetry", 0) for d in dropped)
    assert reported == evicted
    received = 0
    for device in devices:
        values = [r["value"] for r in readings_of(sub, device.id)]
        received += len(values)
        # the oldest went first: what is left of each device is its newest readings
        assert values == list(range(limit - len(values), limit))
    assert received + evicted == limit * len(devices)


async def test_the_status_says_offline_when_the_uplink_fails_for_good(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A non-network failure ends the session with a clean DISCONNECT, which suppresses the
    last will: the uplink must say offline itself before it leaves, or the retained status
    stays online after the process is gone."""
    cfg = config(tmp_path, broker).model_copy(
        update={"node": NodeSection(id="n-gone", data_dir=tmp_path / "data")}
    )
    gw = Gateway(cfg, registry=registry(), restart_policy=RestartPolicy(base_delay=0.05, burst=2))
    assert gw.outbox is not None
    failures = 0

    async def failing(limit: int) -> Any:
        nonlocal failures
        await asyncio.sleep(0.3)  # long enough to say online first
        failures += 1
        raise RuntimeError("injected: a bug in the send path")

    gw.outbox.next_messages = failing  # type: ignore[method-assign]
    with pytest.raises(ExceptionGroup) as info:  # the node gives up, as it must
        await asyncio.wait_for(gw.run(handle_signals=False), 30)
    assert info.group_contains(ComponentGaveUp)
    assert failures >= 2
    async with collect(broker, "cityneuron/v1/n-gone/status") as sub:
        await sub.wait(lambda: bool(sub.on("/status")))
    (status,) = sub.on("/status")
    assert status.retain
    assert status.json()["state"] == "offline"


async def test_an_overdue_puback_ends_the_session_and_a_timely_one_does_not(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """One watchdog for every message in flight, not a timer each: a PUBACK later than
    `ack_timeout` ends the connection (the messages go again on the next one)."""
    cfg = config(tmp_path, broker, CounterConfig(type="counter", id="c1", interval=0.01))
    async with collect(broker, "cityneuron/v1/n1/telemetry/#") as sub, running(cfg) as gw:
        uplink = gw.uplink
        assert uplink is not None
        await sub.wait(lambda: len(readings_of(sub, "c1")) >= 20)
        connects = uplink.connects
        uplink.ack_timeout = 0.4
        await asyncio.sleep(1.5)  # PUBACKs come in milliseconds: the session holds
        assert uplink.connects == connects and uplink.connected.is_set()
        # a message that never got its PUBACK (as from a broker that stopped acking)
        uplink._sent_at = {0: 0.0, **uplink._sent_at}
        for _ in range(100):
            if uplink.connects > connects:
                break
            await asyncio.sleep(0.05)
        assert uplink.connects == connects + 1
        seen = len(readings_of(sub, "c1"))
        await sub.wait(lambda: len(readings_of(sub, "c1")) > seen + 20)
