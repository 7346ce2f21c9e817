"""Rules deployed over MQTT to a running node under steady load."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_sim.broker import MosquittoBroker
from gateway.app import Gateway
from gateway.config import (
    MqttSection,
    NodeConfig,
    NodeSection,
    OutboxSection,
    RulesSection,
    TlsSection,
    TrustedKey,
)
from gateway.plugins import DriverRegistry
from rules.signing import generate, load_private, public_text, sign
from tests.helpers import CounterConfig, CounterDriver, GaugeConfig, GaugeDriver
from tests.mqtt import Collector, collect, readings_of
from tests.operator import OPERATOR_ID, OPERATOR_KEY, operator_security
from tests.operator import signed as sign_command

R1 = """
  - id: high-level
    devices: [tank]
    when: level > 2.0
    alarm: {kind: high_level, message: "level {level}"}
"""
R2 = """
  - id: count-marker
    devices: [c1]
    when: count % 50 == 0
    event: {kind: marker}
"""


def bundle(version: int, *rules: str) -> str:
    return f"version: {version}\nname: e2e\nrules:\n" + "".join(rules)


async def deploy(
    sub: Collector,
    args: dict[str, Any],
    node: str = "n1",
    *,
    key_id: str = OPERATOR_ID,
    private: Ed25519PrivateKey = OPERATOR_KEY,
) -> dict[str, Any]:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "test/replies"
    before = len(sub.on("test/replies"))
    topic = f"cityneuron/v1/{node}/cmd/rules.deploy"
    body = sign_command(topic, {"args": args}, key_id=key_id, private=private)
    await sub.publish(topic, json.dumps(body).encode(), properties=props)
    await sub.wait(lambda: len(sub.on("test/replies")) > before, timeout=15)
    reply: dict[str, Any] = sub.on("test/replies")[-1].json()
    return reply


async def test_deploy_under_load_keeps_readings_and_alarm_state(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    key: Ed25519PrivateKey = load_private(generate()[0])
    registry = DriverRegistry()
    registry.add(CounterDriver, "tests", "counter")
    registry.add(GaugeDriver, "tests", "gauge")
    config = NodeConfig(
        node=NodeSection(id="n1", data_dir=tmp_path / "data"),
        mqtt=MqttSection(host=broker.host, port=broker.port, tls=TlsSection(enabled=False)),
        outbox=OutboxSection(commit_interval=0.01),
        security=operator_security(["rules"]),
        rules=RulesSection(
            trusted_keys=[TrustedKey(id="ops", public_key=public_text(key.public_key()))]
        ),
        devices=[
            CounterConfig(type="counter", id="c1", interval=0.005),
            GaugeConfig(type="gauge", id="tank", level=2.5),
        ],
    )
    gw = Gateway(config, registry=registry)

    def signed(text: str) -> dict[str, str]:
        return {"bundle": text, "signature": sign(text.encode(), key), "key": "ops"}

    async with (
        collect(broker, "cityneuron/v1/n1/#", "test/replies") as sub,
        asyncio.TaskGroup() as tg,
    ):
        tg.create_task(gw.run(handle_signals=False), name="gateway")
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
        first = await deploy(sub, signed(bundle(1, R1)))
        assert first["ok"], first
        await sub.wait(lambda: bool(sub.on("/events/alarm.high_level")))
        await asyncio.sleep(0.3)
        # a tampered push is refused with the reason; v1 keeps running
        bad = await deploy(sub, {**signed(bundle(2, R1, R2)), "bundle": bundle(2, R1, R2) + " "})
        assert bad["error"]["code"] == "bad_signature"
        # the real v2: R1 unchanged, R2 new — deployed in the middle of the counter's stream
        second = await deploy(sub, signed(bundle(2, R1, R2)))
        assert second["ok"], second
        assert second["result"]["previous_version"] == 1
        await sub.wait(lambda: len(sub.on("/events/marker")) >= 3)
        replayed = await deploy(sub, signed(bundle(1, R1)))
        assert replayed["error"]["code"] == "stale_version"
        status_n = gw.rules.stats.fired if gw.rules else 0
        gw.request_stop()
    # the unchanged rule's raised alarm survived the swap: raised exactly once
    raised = [m.json() for m in sub.on("/events/alarm.high_level")]
    assert [e["data"]["state"] for e in raised] == ["raised"]
    assert raised[0]["data"]["bundle"] == 1
    # no reading lost across the deployments
    values = [r["value"] for r in readings_of(sub, "c1")]
    assert values == list(range(len(values)))
    markers = [m.json()["data"]["count"] for m in sub.on("/events/marker")]
    assert all(n % 50 == 0 for n in markers)
    assert status_n >= 4
    # persisted: a restart runs v2
    restarted = Gateway(config, registry=registry)
    assert restarted.rules.version == 2
