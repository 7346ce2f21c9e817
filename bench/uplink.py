"""Uplink throughput: producer -> durable outbox -> broker PUBACK, against a plain loop.

Run:  .venv/bin/python bench/uplink.py [--records 20000]

Both sides run in the same process against the same local Mosquitto, one after the other:

* baseline: a plain aiomqtt QoS 1 publish loop, one message per record, 8 in flight,
  nothing stored (what a gateway without a durable cache does);
* cityneuron: records published on the node's bus, committed to the SQLite outbox
  (fsync: full), batched into telemetry messages and deleted after PUBACK;
* drain: the same records produced while the broker is down, then the time to empty the
  outbox once it is back.

It prints records per second for each and the ratio cityneuron / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firmware_sim.broker import MosquittoBroker
from gateway.app import Gateway
from gateway.config import (
    MqttSection,
    NodeConfig,
    NodeSection,
    OutboxSection,
    TlsSection,
)
from gateway.kernel.records import Reading

WINDOW = 8


async def baseline(broker: MosquittoBroker, n: int, batch: int) -> float:
    """Seconds to publish n records as QoS 1 messages of `batch` records, 8 in flight."""
    sem = asyncio.Semaphore(WINDOW)
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:

        async def one(first: int) -> None:
            try:
                readings = [
                    Reading(device="d0", point="count", value=i, node="bench").to_dict()
                    for i in range(first, min(n, first + batch))
                ]
                await client.publish("bench/baseline", json.dumps(readings), qos=1)
            finally:
                sem.release()

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for first in range(0, n, batch):
                await sem.acquire()
                tg.create_task(one(first), name=f"baseline[{first}]")
        return time.perf_counter() - start


def node_config(workdir: Path, broker: MosquittoBroker) -> NodeConfig:
    return NodeConfig(
        node=NodeSection(id="bench", data_dir=workdir / "data"),
        mqtt=MqttSection(
            host=broker.host,
            port=broker.port,
            tls=TlsSection(enabled=False),
            max_inflight=WINDOW,
            reconnect_max=0.5,
        ),
        outbox=OutboxSection(fsync="full", commit_interval=0.05, batch_max=100),
    )


async def produce(gw: Gateway, n: int, devices: int = 4) -> None:
    for i in range(n):
        await gw.bus.publish(
            Reading(device=f"d{i % devices}", point="count", value=i, node="bench")
        )


async def until_drained(gw: Gateway, n: int) -> None:
    """Until the broker has acknowledged `n` records in all. (Not until the outbox file is
    empty: acknowledged messages are deleted with the next commit, up to `ack_interval`
    later, and that delay is not delivery.)"""
    assert gw.outbox is not None and gw.uplink is not None
    while gw.outbox.stats.delivered < n:
        await asyncio.sleep(0.005)


async def cityneuron(workdir: Path, broker: MosquittoBroker, n: int) -> tuple[float, float]:
    """(seconds for n records end to end, seconds to drain n records after an outage)."""
    gw = Gateway(node_config(workdir, broker))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gw.run(handle_signals=False), name="gateway")
        await gw.ready.wait()
        assert gw.uplink is not None and gw.outbox is not None
        await gw.uplink.connected.wait()
        start = time.perf_counter()
        await produce(gw, n)
        await until_drained(gw, n)
        live = time.perf_counter() - start

        broker.stop()
        while gw.uplink.connected.is_set():
            await asyncio.sleep(0.01)
        accepted = gw.outbox.stats.accepted
        await produce(gw, n)
        while gw.outbox.stats.accepted < accepted + n:
            await asyncio.sleep(0.01)
        broker.start()
        await gw.uplink.connected.wait()
        start = time.perf_counter()
        await until_drained(gw, accepted + n)
        drain = time.perf_counter() - start
        gw.request_stop()
    return live, drain


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker(workdir=Path(tmp)) as broker:
        single = n / await baseline(broker, n, 1)
        batched = n / await baseline(broker, n, 100)
        live, drain = await cityneuron(Path(tmp), broker, n)
    live_rate, drain_rate = n / live, n / drain
    print(f"records: {n}, in flight: {WINDOW}, outbox fsync: full, batch_max: 100")
    print(f"(a) plain aiomqtt QoS 1 loop, 1 record/message, nothing stored:  {single:8.0f} rec/s")
    print(f"(b) plain aiomqtt QoS 1 loop, 100 records/message, nothing stored:{batched:8.0f} rec/s")
    print(
        f"cityneuron: bus -> durable outbox -> broker PUBACK:               {live_rate:8.0f} rec/s"
    )
    print(
        f"cityneuron: backlog drain after an outage:                        {drain_rate:8.0f} rec/s"
    )
    print(f"ratio cityneuron / (a): {live_rate / single:.2f}   (target >= 0.5)")
    print(f"ratio cityneuron / (b): {live_rate / batched:.2f}   (the cost of durability)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().records))
