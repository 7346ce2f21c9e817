"""One failing vendor driver never takes the node down: a real node process, a real
Mosquitto, a real Modbus slave beside four misbehaving plugins installed as packages."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from drivers.modbus.profile import load_profile
from firmware_sim.broker import MosquittoBroker, free_port
from firmware_sim.city import ManholeCover
from firmware_sim.modbus import ModbusSimServer, SimSlave
from tests.mqtt import Collector, collect, readings_of

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "tests" / "fixtures" / "plugins" / "misbehaving_drivers.py"
RUN_FOR = 40.0  # the issue says 5 minutes; restarts back off to 16 s and more by then
STOP_TIMEOUT = 5.0  # the node's default per component

CONFIG = """\
node: {{id: n1, data_dir: {data}}}
mqtt: {{host: 127.0.0.1, port: {mqtt}, tls: {{enabled: false}}, keepalive: 5}}
http: {{port: {http}}}
discovery: {{enabled: false}}
outbox: {{commit_interval: 50ms}}
devices:
  - type: modbus
    id: mh-1
    profile: manhole_cover
    unit: 1
    connection: {{kind: tcp, host: 127.0.0.1, port: {modbus}}}
    poll_interval: 200ms
    report: {{mode: periodic, period: 200ms}}
  - {{type: crash_at_start, id: bad-start}}
  - {{type: crash_later, id: bad-later, after: 1s}}
  - {{type: crash_once, id: flaky, marker: {marker}}}
  - {{type: hang_on_stop, id: stubborn, hang: 60s, interval: 500ms}}
"""


def install_plugin(site: Path) -> None:
    """The plugins as an installed distribution: a module and its entry points."""
    site.mkdir()
    shutil.copy(PLUGIN, site / PLUGIN.name)
    dist = site / "cityneuron_misbehaving-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: cityneuron-misbehaving\nVersion: 1.0\n"
    )
    names = {
        "crash_at_start": "CrashAtStart",
        "crash_later": "CrashLater",
        "crash_once": "CrashOnce",
        "hang_on_stop": "HangOnStop",
    }
    (dist / "entry_points.txt").write_text(
        "[cityneuron.drivers]\n"
        + "".join(f"{t} = misbehaving_drivers:{c}\n" for t, c in names.items())
    )


def start_node(config: Path, site: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def events(sub: Collector, device: str) -> list[str]:
    return [
        m.json()["kind"]
        for m in sub.matching(lambda m: "/events/device." in m.topic)
        if m.json()["source"] == device
    ]


def statuses(sub: Collector) -> list[dict[str, object]]:
    return [m.json() for m in sub.on("/n1/status")]


async def readyz(port: int) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as resp,
    ):
        return resp.status, await resp.json()


async def test_failing_vendor_drivers_are_isolated_reported_once_and_the_node_stops(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    site = tmp_path / "site"
    install_plugin(site)
    http_port = free_port()
    slave = SimSlave(unit=1, profile=load_profile("manhole_cover"), sensor=ManholeCover())
    log = tmp_path / "node.log"
    async with (
        ModbusSimServer([slave]) as modbus,
        collect(broker, "cityneuron/v1/n1/#") as sub,
    ):
        config = tmp_path / "node.yaml"
        config.write_text(
            CONFIG.format(
                data=tmp_path / "data",
                mqtt=broker.port,
                http=http_port,
                modbus=modbus.port,
                marker=tmp_path / "crashed-once",
            )
        )
        node = start_node(config, site, log)
        try:
            await sub.wait(lambda: len(readings_of(sub, "mh-1")) > 0, timeout=30)
            started = time.monotonic()
            counts = []
            while time.monotonic() - started < RUN_FOR:
                before = len(readings_of(sub, "mh-1"))
                await asyncio.sleep(5)
                counts.append(len(readings_of(sub, "mh-1")) - before)
                assert node.poll() is None, log.read_text()

            status, ready = await readyz(http_port)
            last_status = statuses(sub)[-1]
            node.send_signal(signal.SIGTERM)
            asked = time.monotonic()
            code = await asyncio.to_thread(node.wait, 30)
            stopped_in = time.monotonic() - asked
        finally:
            if node.poll() is None:
                node.kill()
                node.wait()
        await sub.wait(lambda: statuses(sub)[-1]["state"] == "offline", timeout=5)
    text = log.read_text()

    # the healthy Modbus device went on at its rate (5 readings/s, 5 points) all along
    assert all(n >= 25 for n in counts), (counts, text)
    # the flaky one recovered; the broken ones are offline, each reported once
    assert events(sub, "bad-start") == ["device.offline"]
    assert events(sub, "bad-later") == ["device.online", "device.offline"]
    assert events(sub, "flaky") == ["device.offline", "device.online"]
    assert events(sub, "stubborn") == ["device.online"]
    assert len(readings_of(sub, "flaky")) > 10
    offline = next(
        m.json() for m in sub.on("/events/device.offline") if m.json()["source"] == "bad-start"
    )
    assert "RuntimeError: vendor SDK not initialised" in offline["message"]

    # readiness: the node is ready, degraded, and says which drivers fail and why
    assert status == 200
    assert ready["ready"] is True and ready["degraded"] is True
    failing = {f["component"]: f for f in ready["failing"]}  # type: ignore[index,union-attr]
    assert set(failing) == {"driver[bad-start]", "driver[bad-later]"}
    assert failing["driver[bad-later]"]["error"] == "ValueError: reading 10 could not be parsed"
    assert failing["driver[bad-start]"]["failures"] >= 4
    # the retained status says the same
    assert last_status["degraded"] is True
    assert {f["component"] for f in last_status["failing"]} == set(failing)  # type: ignore[union-attr]

    # a stop within the stop timeout although one driver ignores its cancellation
    assert code == 0, text
    assert stopped_in < STOP_TIMEOUT + 1.5, (stopped_in, text)
    assert "driver[stubborn].run did not stop within 5s of being cancelled; abandoned" in text
    assert "node stopped on error" not in text
    # the outbox stopped last, with everything committed
    assert json.loads((sub.on("/n1/status")[-1]).payload)["state"] == "offline"
