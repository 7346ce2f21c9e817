"""A real MQTT client that records what the node sends, for assertions."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_sim.broker import MosquittoBroker
from tests.operator import OPERATOR_ID, OPERATOR_KEY, signed


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Any

    def json(self) -> Any:
        return json.loads(self.payload)


class Collector:
    """Subscribes to topics and keeps every message; `wait` blocks until a condition.

    With `persistent`, it keeps an MQTT 3.1.1 session (clean_session false, fixed client
    id) and reconnects when the broker goes away, so a broker with persistence queues
    what arrives meanwhile, as a real back-end subscriber would.
    """

    def __init__(
        self,
        broker: MosquittoBroker,
        topics: tuple[str, ...],
        protocol: aiomqtt.ProtocolVersion,
        persistent: bool,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.broker = broker
        self.login = login
        self.topics = topics
        self.protocol = protocol
        self.persistent = persistent
        self.messages: list[Received] = []
        self.client: aiomqtt.Client | None = None
        self.subscribed = asyncio.Event()
        self._changed = asyncio.Event()

    async def _pump(self) -> None:
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError:
                if not self.persistent:
                    raise
            self.client = None
            self.subscribed.clear()
            await asyncio.sleep(0.05)

    async def _session(self) -> None:
        kw: dict[str, Any] = {}
        if self.persistent:
            kw = {"identifier": "test-collector", "clean_session": False}
        if self.login is not None:
            kw["username"], kw["password"] = self.login
        async with aiomqtt.Client(
            self.broker.host, self.broker.port, protocol=self.protocol, **kw
        ) as client:
            for topic in self.topics:
                await client.subscribe(topic, qos=1)
            self.client = client
            self.subscribed.set()
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                self.messages.append(Received(str(m.topic), payload, m.retain, m.properties))
                self._changed.set()

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic.endswith(suffix)]

    def matching(self, predicate: Callable[[Received], bool]) -> list[Received]:
        return [m for m in self.messages if predicate(m)]

    async def publish(self, topic: str, payload: bytes, properties: Any = None) -> None:
        assert self.client is not None
        await self.client.publish(topic, payload, qos=1, properties=properties)

    async def wait(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `condition()` holds, re-checking on every message and every 50 ms."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)


@asynccontextmanager
async def collect(
    broker: MosquittoBroker,
    *topics: str,
    protocol: aiomqtt.ProtocolVersion | None = None,
    persistent: bool = False,
    login: tuple[str, str] | None = None,
) -> AsyncIterator[Collector]:
    if persistent:
        protocol = aiomqtt.ProtocolVersion.V311
    collector = Collector(
        broker,
        topics or ("cityneuron/#",),
        protocol or aiomqtt.ProtocolVersion.V5,
        persistent,
        login,
    )
    async with asyncio.TaskGroup() as tg:
        pump = tg.create_task(collector._pump(), name="test.mqtt-collector")
        try:
            await asyncio.wait_for(collector.subscribed.wait(), 10)
            yield collector
        finally:
            pump.cancel()


CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def telemetry_readings(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The readings of a telemetry message, one object each (format 1's shape), decoded as
    docs/mqtt-api.md tells a back end to: in format 2, reading i of a poll has the poll's
    values at index i and the id of the poll with base-32 i as its last two characters."""
    if body.get("format", 1) == 1:
        return list(body["readings"])
    out: list[dict[str, Any]] = []
    for poll in body["polls"]:
        columns = (poll["points"], poll["values"], poll["units"], poll["quality"])
        assert len({len(c) for c in columns}) == 1, f"ragged poll {poll}"
        for i, (point, value, unit, quality) in enumerate(zip(*columns, strict=True)):
            out.append({
                "id": poll["id"][:24] + CROCKFORD[i >> 5] + CROCKFORD[i & 31],
                "point": point, "value": value, "unit": unit, "quality": quality,
                "ts": poll["ts"],
            })  # fmt: skip
    return out


def readings_of(collector: Collector, device: str) -> list[dict[str, Any]]:
    """Every reading received on the device's telemetry topic, in arrival order."""
    out: list[dict[str, Any]] = []
    for m in collector.on(f"/telemetry/{device}"):
        out.extend(telemetry_readings(m.json()))
    return out


async def command(
    sub: Collector,
    name: str,
    args: dict[str, object],
    node: str = "n1",
    *,
    sign: bool = True,
    key_id: str = OPERATOR_ID,
    private: Ed25519PrivateKey = OPERATOR_KEY,
) -> dict[str, object]:
    """Send command `name` to the node, signed by the test operator unless not `sign`,
    and return its reply (MQTT 5 response topic)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = "test/replies"
    before = len(sub.on("test/replies"))
    topic = f"cityneuron/v1/{node}/cmd/{name}"
    body: dict[str, Any] = {"args": args}
    if sign:
        body = signed(topic, body, key_id=key_id, private=private)
    await sub.publish(topic, json.dumps(body).encode(), properties=props)
    await sub.wait(lambda: len(sub.on("test/replies")) > before)
    reply: dict[str, object] = sub.on("test/replies")[-1].json()
    return reply
