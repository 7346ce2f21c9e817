"""Signed commands against a real Mosquitto and real Modbus slaves: who may write which
device, deploy or roll back rules; unsigned, tampered, expired, replayed and out-of-role
commands are refused, audited locally and reported upstream, and a restart does not reopen
the replay window."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.modbus.driver import ModbusConfig
from drivers.modbus.profile import load_profile
from firmware_sim.broker import MosquittoBroker
from firmware_sim.modbus import ModbusSimServer, SimSlave
from gateway.app import Gateway
from gateway.config import MqttSection, NodeConfig, NodeSection, SecuritySection, TlsSection
from tests.mqtt import Collector, collect
from tests.operator import operator_key, signed

BASE = "cityneuron/v1/n1/cmd"
VALVES = Ed25519PrivateKey.generate()  # may write valve-* only
RULES = Ed25519PrivateKey.generate()  # may deploy and roll back rules only
STRANGER = Ed25519PrivateKey.generate()  # trusted by nobody


def node_config(tmp_path: Path, broker: MosquittoBroker, port: int) -> NodeConfig:
    def modbus(device: str, unit: int) -> ModbusConfig:
        return ModbusConfig.model_validate(
            {
                "type": "modbus",
                "id": device,
                "profile": "dust_noise",
                "unit": unit,
                "connection": {"kind": "tcp", "host": "127.0.0.1", "port": port},
            }
        )

    return NodeConfig(
        node=NodeSection(id="n1", data_dir=tmp_path / "data", groups=["district-5"]),
        mqtt=MqttSection(host=broker.host, port=broker.port, tls=TlsSection(enabled=False)),
        security=SecuritySection(
            keys=[
                operator_key(["write:valve-*"], key_id="valves", private=VALVES),
                operator_key(["rules"], key_id="rules-ops", private=RULES),
            ],
            max_command_lifetime=600,
        ),
        devices=[modbus("valve-1", 1), modbus("pump-1", 2)],
    )


@asynccontextmanager
async def node(cfg: NodeConfig) -> AsyncIterator[Gateway]:
    gw = Gateway(cfg)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gw.run(handle_signals=False), name="gateway")
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
        try:
            yield gw
        finally:
            gw.request_stop()


class Sender:
    """Publishes raw command payloads, each with its own response topic."""

    def __init__(self, sub: Collector) -> None:
        self.sub = sub
        self.n = 0

    async def send(self, topic: str, body: dict[str, Any] | bytes) -> dict[str, Any]:
        self.n += 1
        reply_topic = f"test/replies/{self.n}"
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_topic
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.sub.publish(topic, payload, properties=props)
        await self.sub.wait(lambda: bool(self.sub.on(reply_topic)))
        reply: dict[str, Any] = self.sub.on(reply_topic)[0].json()
        return reply


def code(reply: dict[str, Any]) -> str | None:
    return None if reply["ok"] else reply["error"]["code"]


def write(device: str, value: bool, **kw: Any) -> tuple[str, dict[str, Any]]:
    topic = f"{BASE}/write"
    body = {"args": {"device": device, "point": "fan_on", "value": value}}
    return topic, signed(topic, body, **kw)


def audit_entries(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "data" / "audit" / "commands.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_only_signed_commands_within_their_role_change_the_node(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    valve = SimSlave(unit=1, profile=load_profile("dust_noise"))
    pump = SimSlave(unit=2, profile=load_profile("dust_noise"))
    async with (
        ModbusSimServer([valve, pump]) as server,
        collect(broker, "test/#", "cityneuron/v1/n1/events/#") as sub,
    ):
        cfg = node_config(tmp_path, broker, server.port)
        s = Sender(sub)
        async with node(cfg):
            unsigned = await s.send(
                f"{BASE}/write", {"args": {"device": "valve-1", "point": "fan_on", "value": True}}
            )
            topic, ok_body = write("valve-1", True, key_id="valves", private=VALVES)
            accepted = await s.send(topic, ok_body)
            replay = await s.send(topic, ok_body)
            tampered = await s.send(
                topic, {**ok_body, "args": {**ok_body["args"], "device": "pump-1"}}
            )
            forbidden = await s.send(*write("pump-1", True, key_id="valves", private=VALVES))
            stranger = await s.send(*write("valve-1", False, key_id="valves", private=STRANGER))
            unknown = await s.send(*write("valve-1", False, key_id="nobody", private=STRANGER))
            expired = await s.send(
                *write("valve-1", False, key_id="valves", private=VALVES, now=time.time() - 400)
            )
            too_long = await s.send(
                *write("valve-1", False, key_id="valves", private=VALVES, lifetime=86400)
            )
            # signed for another node, published to this one
            other = signed(
                "cityneuron/v1/n2/cmd/write",
                {"args": {"device": "valve-1", "point": "fan_on", "value": False}},
                key_id="valves",
                private=VALVES,
            )
            elsewhere = await s.send(f"{BASE}/write", other)
            malformed = await s.send(f"{BASE}/write", {"args": {}, "auth": {"key": "valves"}})
            rollback_by_valves = await s.send(
                f"{BASE}/rules.rollback",
                signed(f"{BASE}/rules.rollback", {}, key_id="valves", private=VALVES),
            )
            rollback_unsigned = await s.send(f"{BASE}/rules.rollback", {})
            rollback = await s.send(
                f"{BASE}/rules.rollback",
                signed(f"{BASE}/rules.rollback", {}, key_id="rules-ops", private=RULES),
            )
            group_topic = "cityneuron/v1/fleet/district-5/cmd/write"
            group = await s.send(
                group_topic,
                signed(
                    group_topic,
                    {"args": {"device": "valve-1", "point": "pm_alarm_limit", "value": 321}},
                    key_id="valves",
                    private=VALVES,
                ),
            )
            ping = await s.send(f"{BASE}/ping", {})  # read-only: open
            status = await s.send(f"{BASE}/rules.status", {})
            await sub.wait(lambda: len(sub.on("/events/command.audit")) >= 15)

        # a restart reads the accepted nonces back: the replay window stays closed
        async with node(cfg):
            replay_after_restart = await s.send(topic, ok_body)
            await sub.wait(lambda: len(sub.on("/events/command.audit")) >= 16)

    assert code(unsigned) == "unauthorized"
    assert "role 'write:valve-1'" in unsigned["error"]["message"]
    assert accepted["ok"] is True, accepted
    assert code(replay) == "replayed"
    assert code(tampered) == "bad_signature"
    assert code(forbidden) == "forbidden"
    assert "write:pump-1" in forbidden["error"]["message"]
    assert code(stranger) == "bad_signature"
    assert code(unknown) == "unknown_key"
    assert code(expired) == "expired"
    assert code(too_long) == "expiry_too_far"
    assert code(elsewhere) == "bad_signature"
    assert code(malformed) == "malformed_auth"
    assert code(rollback_by_valves) == "forbidden"
    assert code(rollback_unsigned) == "unauthorized"
    assert code(rollback) == "no_previous", rollback  # authorized; no older bundle
    assert group["ok"] is True, group
    assert ping["ok"] is True and status["ok"] is True
    assert code(replay_after_restart) == "replayed"
    # only the accepted writes reached a device
    assert valve.writes == [("fan_on", True), ("pm_alarm_limit", 321)]
    assert pump.writes == []

    entries = audit_entries(tmp_path)
    path = tmp_path / "data" / "audit" / "commands.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    refused = [e for e in entries if e["decision"] == "refused"]
    assert [e["code"] for e in refused] == [
        "unauthorized",
        "replayed",
        "bad_signature",
        "forbidden",
        "bad_signature",
        "unknown_key",
        "expired",
        "expiry_too_far",
        "bad_signature",
        "malformed_auth",
        "forbidden",
        "unauthorized",
        "replayed",
    ]
    accepted_entries = [e for e in entries if e["decision"] == "accepted"]
    assert [(e["command"], e["key"]) for e in accepted_entries] == [
        ("write", "valves"),
        ("rules.rollback", "rules-ops"),
        ("write", "valves"),
    ]
    assert accepted_entries[0]["args"] == {"device": "valve-1", "point": "fan_on", "value": True}
    done = [e["outcome"] for e in entries if e["decision"] == "done"]
    assert done == ["ok", "no_previous", "ok"]
    assert not any(e["command"] in ("ping", "rules.status") for e in entries)
    # upstream: one event per refusal and per finished command
    events = [m.json() for m in sub.on("/events/command.audit")]
    assert len(events) == 12 + 3 + 1
    assert {e["data"]["decision"] for e in events} == {"refused", "done"}
    assert any(e["data"].get("code") == "forbidden" and e["severity"] == "warning" for e in events)
