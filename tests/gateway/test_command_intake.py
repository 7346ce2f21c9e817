"""Hostile and clumsy commands against a real node and Mosquitto: each gets a clear
refusal (or is counted), and the connection and the node stay up."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiomqtt
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_sim.broker import MosquittoBroker
from gateway.commands import CommandRouter
from tests.gateway.test_uplink import config, running
from tests.mqtt import Collector, collect
from tests.operator import operator_security, signed

BASE = "cityneuron/v1/n1/cmd"
ROOT = Path(__file__).resolve().parents[2]


def props(reply_topic: str) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.ResponseTopic = reply_topic
    return p


def replies(sub: Collector, topic: str) -> list[dict[str, object]]:
    return [m.json() for m in sub.on(topic)]


async def test_deep_json_and_bad_reply_topics_are_refused_and_the_uplink_stays(
    tmp_path, broker: MosquittoBroker
) -> None:
    async with (
        collect(broker, "test/#", "cityneuron/v1/n1/replies/#", "cityneuron/v1/n2/#") as sub,
        running(config(tmp_path, broker)) as gw,
    ):
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
        connects = gw.uplink.connects

        deep = b'{"args": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
        await sub.publish(f"{BASE}/ping", deep, properties=props("test/deep"))
        await sub.wait(lambda: bool(sub.on("test/deep")))
        (reply,) = replies(sub, "test/deep")
        assert reply["error"] == {"code": "malformed", "message": "payload nests deeper than 32"}

        for bad in ("a/+/#", "cityneuron/v1/n2/cmd/write", "cityneuron/v1/n2/status", "$SYS/x"):
            await sub.publish(f"{BASE}/ping", b"{}", properties=props(bad))
        await sub.wait(lambda: len(sub.on("/n1/replies/ping")) == 4)
        codes = {r["error"]["code"] for r in replies(sub, "/n1/replies/ping")}  # type: ignore[index]
        assert codes == {"bad_reply_topic"}
        assert sub.matching(lambda m: m.topic.startswith("cityneuron/v1/n2/")) == []

        # MQTT 3.1.1 style: the reply topic in the payload is checked the same way
        await sub.publish(f"{BASE}/ping", json.dumps({"reply_to": "x/#"}).encode())
        await sub.wait(lambda: len(sub.on("/n1/replies/ping")) == 5)

        await asyncio.sleep(0.5)
        assert gw.uplink.connects == connects  # never reconnected
        await sub.publish(f"{BASE}/ping", b'{"id": "alive"}', properties=props("test/alive"))
        await sub.wait(lambda: bool(sub.on("test/alive")))
        assert replies(sub, "test/alive")[0]["ok"] is True


async def test_a_reused_id_with_other_content_is_refused_not_answered_from_cache(
    tmp_path, broker: MosquittoBroker
) -> None:
    cfg = config(tmp_path, broker).model_copy(update={"security": operator_security()})
    async with collect(broker, "test/#") as sub, running(cfg) as gw:
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
        await sub.publish(f"{BASE}/ping", b'{"id": "k1"}', properties=props("test/a"))
        await sub.wait(lambda: bool(sub.on("test/a")))
        args = {"device": "x", "point": "p", "value": 1}
        write = json.dumps(signed(f"{BASE}/write", {"id": "k1", "args": args})).encode()
        await sub.publish(f"{BASE}/write", write, properties=props("test/b"))
        await sub.publish(f"{BASE}/ping", b'{"id": "k1"}', properties=props("test/c"))
        await sub.wait(lambda: bool(sub.on("test/b")) and bool(sub.on("test/c")))
    assert replies(sub, "test/b")[0]["error"]["code"] == "duplicate_id"  # type: ignore[index]
    assert replies(sub, "test/c")[0]["ok"] is True  # the same command again: from cache


async def test_a_flood_of_commands_gets_a_reply_each_busy_or_done(
    tmp_path, broker: MosquittoBroker
) -> None:
    n = 2000
    async with collect(broker, "test/#") as sub, running(config(tmp_path, broker)) as gw:
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
        async with aiomqtt.Client(
            broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as flood:
            for i in range(n):
                await flood.publish(
                    f"{BASE}/ping", f'{{"id": "f{i}"}}'.encode(), qos=0, properties=props("test/f")
                )
        await sub.wait(lambda: len(sub.on("test/f")) == n, timeout=60)
        busy = gw.uplink.commands_busy
    got = replies(sub, "test/f")
    done = [r for r in got if r["ok"]]
    refused = [r for r in got if not r["ok"]]
    assert all(r["error"]["code"] == "busy" for r in refused)  # type: ignore[index]
    assert len(done) + len(refused) == n
    assert len(refused) == busy


@settings(deadline=None)
@given(st.binary(max_size=2000))
async def test_any_payload_gets_a_reply_and_never_raises(payload: bytes) -> None:
    router = CommandRouter(max_bytes=1024)

    async def ping(args: dict[str, object]) -> dict[str, object]:
        return {"pong": True}

    router.register("ping", ping)
    reply = await router.handle("ping", payload)
    assert reply.ok or reply.error_code in ("malformed", "too_large")


@settings(deadline=None)
@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=3), c),
        max_leaves=50,
    )
)
async def test_json_of_any_shape_is_parsed_or_refused_as_malformed(args: object) -> None:
    router = CommandRouter()

    async def echo(a: dict[str, object]) -> dict[str, object]:
        return a

    router.register("echo", echo)
    reply = await router.handle("echo", json.dumps({"args": {"v": args}}).encode())
    assert reply.ok or reply.error_code == "malformed"


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _reset_peak(pid: int) -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def test_a_200_mb_command_does_not_reach_the_node_s_memory(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """The node announces its Maximum Packet Size (MQTT 5): the broker drops the 200 MB
    command instead of delivering it, so the node never buffers it (it used to: RSS
    72 -> 673 MB). Measured on a real node process, its peak RSS reset before the publish."""
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        f"node: {{id: n-big, data_dir: {tmp_path / 'data'}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, tls: {{enabled: false}}}}\n"
        "http: {enabled: false}\ndiscovery: {enabled: false}\n",
        encoding="utf-8",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "run", "--config", str(cfg),
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            while b"connected to broker" not in await proc.stderr.readline():
                pass
        async with collect(broker, "test/#") as sub:
            await asyncio.sleep(0.5)  # settled after start
            before = _status_kb(proc.pid, "VmRSS")
            _reset_peak(proc.pid)
            async with aiomqtt.Client(
                broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=60
            ) as big:
                payload = b'{"args": {"x": "' + b"a" * (200 * 1024 * 1024) + b'"}}'
                await big.publish(
                    "cityneuron/v1/n-big/cmd/ping", payload, qos=1, properties=props("test/big")
                )
                del payload
            # the node is alive and answers the next command
            await sub.publish(
                "cityneuron/v1/n-big/cmd/ping", b'{"id": "after"}', properties=props("test/ok")
            )
            await sub.wait(lambda: bool(sub.on("test/ok")), timeout=20)
            peak = _status_kb(proc.pid, "VmHWM")
            assert sub.on("test/big") == []  # never delivered, so never answered
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
    assert replies(sub, "test/ok")[0]["ok"] is True
    assert peak - before < 10 * 1024, f"peak RSS rose by {peak - before} kB"
