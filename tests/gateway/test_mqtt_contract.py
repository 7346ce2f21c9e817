"""Every message the node publishes matches the JSON Schemas of docs/mqtt-api.md."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_sim.broker import MosquittoBroker
from gateway.kernel.records import Event, Severity
from tests.gateway.test_uplink import config, running
from tests.helpers import CounterConfig
from tests.mqtt import collect

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def schema(name: str) -> Draft202012Validator:
    doc = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(doc)
    return Draft202012Validator(doc, format_checker=Draft202012Validator.FORMAT_CHECKER)


def test_schemas_are_valid_json_schema() -> None:
    names = sorted(p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json"))
    assert names == [
        "command",
        "detection",
        "event",
        "model",
        "reply",
        "rule-bundle",
        "status",
        "telemetry",
    ]
    for name in names:
        schema(name)


async def test_published_messages_match_the_schemas(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    cfg = config(tmp_path, broker, CounterConfig(type="counter", id="c1", interval=0.01))
    async with collect(broker, "cityneuron/v1/n1/#", "test/r") as sub, running(cfg) as gw:
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
        await gw.bus.publish(
            Event(
                kind="alarm.flood",
                source="river",
                severity=Severity.CRITICAL,
                message="level above 3 m",
                data={"level": 3.2},
                node="n1",
            )
        )
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "test/r"
        await sub.publish("cityneuron/v1/n1/cmd/ping", b'{"id": "a"}', properties=props)
        await sub.wait(lambda: len(sub.on("test/r")) == 1)
        await sub.publish("cityneuron/v1/n1/cmd/nope", b"{}", properties=props)
        await sub.wait(
            lambda: (
                len(sub.on("test/r")) == 2
                and bool(sub.on("/events/alarm.flood"))
                and len(sub.on("/telemetry/c1")) >= 3
            )
        )
    await sub.wait(lambda: sub.on("/status")[-1].json()["state"] == "offline")
    checked: dict[str, int] = {}
    for message in sub.messages:
        if "/cmd/" in message.topic:  # the test's own commands
            continue
        kind = (
            "reply"
            if message.topic == "test/r"
            else "status"
            if message.topic.endswith("/status")
            else "telemetry"
            if "/telemetry/" in message.topic
            else "event"
        )
        body: Any = message.json()
        errors = [e.message for e in schema(kind).iter_errors(body)]
        assert errors == [], (message.topic, body)
        checked[kind] = checked.get(kind, 0) + 1
    assert set(checked) == {"reply", "status", "telemetry", "event"}


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x", "args": {"device": "d", "point": "p", "value": 1}},
        {},
        {"reply_to": "a/b", "correlation_id": 7},
    ],
)
def test_command_schema_accepts_what_the_node_accepts(body: dict[str, Any]) -> None:
    assert list(schema("command").iter_errors(body)) == []
