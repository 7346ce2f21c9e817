"""The broker as the second line: Mosquitto with the shipped per-node ACL
(packaging/mosquitto/cityneuron.acl) and a password per account. Another node's
credentials cannot publish as the node, read its commands or its data, or command it;
operators command it with `cityneuron cmd send` and get the replies."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from pydantic import SecretStr

from firmware_sim.broker import MosquittoBroker
from gateway.app import Gateway
from gateway.config import MqttSection, NodeConfig, NodeSection, OutboxSection, TlsSection
from gateway.plugins import DriverRegistry
from tests.helpers import CounterConfig, CounterDriver
from tests.mqtt import collect
from tests.operator import OPERATOR_KEY, operator_security

ROOT = Path(__file__).resolve().parents[2]
ACL = ROOT / "packaging" / "mosquitto" / "cityneuron.acl"
PASSWORDS = {"n1": "pw-n1", "n2": "pw-n2", "ops": "pw-ops"}


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            ["mosquitto_passwd", "-b", *create, str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    (tmp_path / "broker").mkdir()
    acl = tmp_path / "acl"
    acl.write_text(
        ACL.read_text(encoding="utf-8")
        + "\nuser n1\ntopic read cityneuron/v1/fleet/district-5/cmd/+\n",
        encoding="utf-8",
    )
    with MosquittoBroker(
        workdir=tmp_path / "broker",
        anonymous=False,
        extra_config=f"password_file {passwd}\nacl_file {acl}\n",
    ) as broker:
        yield broker


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_another_client_cannot_publish_as_the_node_or_command_it(
    tmp_path: Path, acl_broker: MosquittoBroker
) -> None:
    registry = DriverRegistry()
    registry.add(CounterDriver, "tests", "counter")
    cfg = NodeConfig(
        node=NodeSection(id="n1", data_dir=tmp_path / "data", groups=["district-5"]),
        mqtt=MqttSection(
            host=acl_broker.host,
            port=acl_broker.port,
            tls=TlsSection(enabled=False),
            username="n1",
            password=SecretStr(PASSWORDS["n1"]),
        ),
        outbox=OutboxSection(commit_interval=0.01),
        security=operator_security(["write:*"]),
        devices=[CounterConfig(type="counter", id="c1", interval=0.2)],
    )
    key = tmp_path / "ops-test.key"
    from cryptography.hazmat.primitives import serialization

    key.write_bytes(
        OPERATOR_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "ops.pw").write_text(PASSWORDS["ops"])
    connection = [
        "--host", acl_broker.host, "--port", str(acl_broker.port), "--no-tls",
        "--username", "ops", "--password-file", str(tmp_path / "ops.pw"),
    ]  # fmt: skip
    gw = Gateway(cfg, registry=registry)
    async with (
        collect(acl_broker, "cityneuron/v1/#", login=("ops", PASSWORDS["ops"])) as ops,
        collect(
            acl_broker,
            "cityneuron/v1/n1/#",
            "cityneuron/v1/fleet/#",
            login=("n2", PASSWORDS["n2"]),
        ) as intruder,
        asyncio.TaskGroup() as tg,
    ):
        tg.create_task(gw.run(handle_signals=False), name="gateway")
        assert gw.uplink is not None
        await asyncio.wait_for(gw.uplink.connected.wait(), 10)
        await ops.wait(lambda: bool(ops.on("/n1/telemetry/c1")))

        # n2 (a valid account) tries to speak for n1 and to command it
        fake = json.dumps({"node": "n1", "state": "offline", "intruder": True}).encode()
        assert intruder.client is not None
        await intruder.client.publish("cityneuron/v1/n1/status", fake, qos=1, retain=True)
        await intruder.client.publish("cityneuron/v1/n1/telemetry/c1", fake, qos=1)
        await intruder.client.publish("cityneuron/v1/n1/events/alarm.x", fake, qos=1)
        write = {"args": {"device": "c1", "point": "count", "value": 0}, "intruder": True}
        await intruder.client.publish("cityneuron/v1/n1/cmd/write", json.dumps(write), qos=1)
        await intruder.client.publish("cityneuron/v1/fleet/district-5/cmd/ping", b"{}", qos=1)

        # the operator commands the node through the CLI and gets its replies
        ping = await cli("cmd", "send", "ping", "--node", "n1", "--unsigned", *connection)
        group = await cli(
            "cmd", "send", "ping", "--group", "district-5", "--unsigned", "--wait", "3",
            *connection,
        )  # fmt: skip
        signed_write = await cli(
            "cmd", "send", "write", "--node", "n1", "--key", str(key),
            "--args", '{"device": "c1", "point": "count", "value": 1}', *connection,
        )  # fmt: skip
        unsigned_write = await cli(
            "cmd", "send", "write", "--node", "n1", "--unsigned",
            "--args", '{"device": "c1", "point": "count", "value": 1}', *connection,
        )  # fmt: skip
        await asyncio.sleep(0.5)
        gw.request_stop()

    # nothing n2 published reached anyone, and n1's retained status is its own
    assert not ops.matching(lambda m: b"intruder" in m.payload)
    statuses = [m.json() for m in ops.on("/n1/status")]
    assert statuses[0]["state"] == "online"
    assert all("intruder" not in s for s in statuses)
    # n2 read nothing of n1's: no telemetry, no status, no replies, no group commands
    assert intruder.messages == []
    assert gw.commands.handled >= 2  # the operator's pings and signed write

    code, out, err = ping
    assert code == 0, err
    (reply,) = [json.loads(line) for line in out.splitlines()]
    assert reply["node"] == "n1" and reply["result"]["pong"] is True
    code, out, err = group
    assert code == 0, err
    assert [json.loads(line)["node"] for line in out.splitlines()] == ["n1"]
    code, out, err = signed_write
    assert json.loads(out)["error"]["code"] == "write_refused", out + err  # counter: read-only
    code, out, err = unsigned_write
    assert code == 1
    assert json.loads(out)["error"]["code"] == "unauthorized"
    # the write n2 sent never reached the node's command intake
    audit = (tmp_path / "data" / "audit" / "commands.jsonl").read_text()
    assert "intruder" not in audit
    assert audit.count('"decision":"accepted"') == 1


async def test_an_anonymous_client_is_turned_away(acl_broker: MosquittoBroker) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(acl_broker.host, acl_broker.port):
            pass
