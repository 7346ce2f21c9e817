"""The node process killed with SIGKILL under load loses nothing the outbox accepted."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from firmware_sim.broker import MosquittoBroker
from tests.mqtt import Collector, collect, telemetry_readings

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
node: {{id: n1, data_dir: {data}}}
mqtt: {{host: 127.0.0.1, port: {port}, tls: {{enabled: false}}, keepalive: 5}}
outbox: {{commit_interval: 20ms, batch_max: 10}}
devices:
{devices}
"""


def start_node(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.gateway.node_runner", str(config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def ids_of_readings(doc: dict[str, Any]) -> list[str]:
    telemetry = "polls" in doc or "readings" in doc
    return [r["id"] for r in telemetry_readings(doc)] if telemetry else []


def stored_messages(db: Path) -> dict[str, list[str]]:
    """Message id -> reading ids of everything the outbox holds (i.e. accepted, not acked)."""
    if not db.exists():  # killed before the outbox was created
        return {}
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        out = {}
        for mid, body in con.execute("SELECT id, body FROM messages"):
            doc = json.loads(body)
            out[mid] = ids_of_readings(doc)
        return out
    finally:
        con.close()


def received_ids(sub: Collector) -> set[str]:
    """Ids of every stored-and-forwarded message received (telemetry and events)."""
    return {m.json()["id"] for m in sub.on("") if "/telemetry/" in m.topic or "/events/" in m.topic}


async def until_stored(db: Path, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(stored_messages, db):
            await asyncio.sleep(0.05)


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


async def test_sigkill_at_random_moments_loses_nothing_accepted(tmp_path: Path) -> None:
    rng = random.Random(20261122)
    data = tmp_path / "data"
    log = tmp_path / "node.log"
    with MosquittoBroker(workdir=tmp_path) as broker:
        devices = "\n".join(f"  - {{type: counter, id: d{i}, interval: 2ms}}" for i in range(4))
        config = tmp_path / "node.yaml"
        config.write_text(CONFIG.format(data=data, port=broker.port, devices=devices))
        accepted: dict[str, list[str]] = {}
        async with collect(broker, "cityneuron/v1/n1/#", persistent=True) as sub:
            for i in range(5):
                proc = start_node(config, log)
                try:
                    # let it run under load for a random time: from its start (sometimes
                    # mid-start-up) or, every other time, from when it stores data (so
                    # that a busy machine's slow start-up does not hide the point)
                    if i % 2:
                        await until_stored(data / "outbox.db")
                    await asyncio.sleep(rng.uniform(0.5, 3.0) if i % 2 == 0 else rng.random())
                finally:
                    proc.send_signal(signal.SIGKILL)
                    await wait_exit(proc, 10)
                accepted.update(stored_messages(data / "outbox.db"))
                # the broker tells everyone the node is gone (last will), retained -- if it
                # had connected at all (on a busy machine a kill can come before that)
                if sub.on("/status"):
                    await sub.wait(
                        lambda: sub.on("/status")[-1].json()["state"] == "offline", timeout=20
                    )
            assert accepted, "the kills never caught messages waiting in the outbox"
            # a final clean run delivers the backlog
            births = len(sub.on("/status"))
            proc = start_node(config, log)
            try:
                await sub.wait(lambda: len(sub.on("/status")) > births, timeout=20)
                assert sub.on("/status")[-1].json()["state"] == "online"
                await sub.wait(lambda: set(accepted) <= received_ids(sub), timeout=60)
            finally:
                proc.send_signal(signal.SIGTERM)
                assert await wait_exit(proc, 20) == 0, log.read_text()[-3000:]
    got = {m.json()["id"]: m.json() for m in sub.on("") if "/status" not in m.topic}
    for mid, reading_ids in accepted.items():
        assert ids_of_readings(got[mid]) == reading_ids
    # an orderly stop says offline itself (what it measured last waits for the next start)
    assert sub.on("/status")[-1].json()["state"] == "offline"
