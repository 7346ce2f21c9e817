"""Modbus polling throughput: the driver against one-request-per-point and raw pymodbus.

Run:  .venv/bin/python bench/modbus_poll.py [--devices 20] [--seconds 5]

A simulator in a separate process serves N devices (unit ids 1..N) with 50 points each
over Modbus TCP on localhost; 20 % of the points change 10 times a second, the rest stay
put (slowly varying sensors next to settings and status). In the same run, for the same
devices and points:

(a) one request per point, as simple gateways do (raw pymodbus client);
(b) raw pymodbus reads of exactly the blocks the driver's planner makes (no decoding,
    no reporting: the floor for the same requests);
(c) cityneuron: N Modbus driver instances on one shared line, polling back to back,
    decoding what changed and reporting it on the bus (report mode on_change).

It prints points per second for each, (c)/(a), and (c)'s time relative to (b).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivers.modbus.driver import ModbusConfig, ModbusDriver
from drivers.modbus.planner import plan
from drivers.modbus.profile import Profile, load_profile
from drivers.sharing import SharedResources
from firmware_sim.broker import free_port, wait_for_port
from gateway.bus import Bus
from gateway.devices import DeviceContext
from gateway.kernel.clock import SystemClock

POINTS = 50
ROUNDS = 5


def bench_profile(path: Path) -> Profile:
    """50 points of mixed types over about 85 holding registers, with small gaps."""
    kinds = ["uint16", "int16", "float32", "int32", "uint16"]
    lines = ["name: bench50", "points:"]
    address = 0
    for i in range(POINTS):
        kind = kinds[i % len(kinds)]
        lines.append(f"  p{i:02d}: {{table: holding_register, address: {address}, type: {kind}}}")
        address += {"uint16": 1, "int16": 1, "float32": 2, "int32": 2}[kind] + (i % 3 == 0)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_profile(str(path))


async def per_point(port: int, units: int, profile: Profile, seconds: float) -> float:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await client.connect()
    points = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for unit in range(1, units + 1):
            for p in profile.points.values():
                await client.read_holding_registers(p.start, count=p.count, device_id=unit)
                points += 1
    elapsed = time.perf_counter() - start
    client.close()
    return points / elapsed


async def raw_blocks(port: int, units: int, profile: Profile, seconds: float) -> float:
    blocks = plan(profile.points.values())
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    await client.connect()
    points = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for unit in range(1, units + 1):
            for b in blocks:
                await client.read_holding_registers(b.start, count=b.count, device_id=unit)
                points += len(b.points)
    elapsed = time.perf_counter() - start
    client.close()
    return points / elapsed


async def driver(port: int, units: int, profile_path: Path, seconds: float) -> tuple[float, int]:
    bus, shared = Bus(), SharedResources()
    sub = bus.subscribe("bench", maxsize=100_000)
    drivers = []
    for unit in range(1, units + 1):
        cfg = ModbusConfig.model_validate(
            {
                "type": "modbus",
                "id": f"d{unit}",
                "profile": str(profile_path),
                "unit": unit,
                "connection": {"kind": "tcp", "host": "127.0.0.1", "port": port},
                "poll_interval": 0.0001,
                "report": {"mode": "on_change"},
            }
        )
        d = ModbusDriver(cfg)
        ctx = DeviceContext(
            node_id="bench",
            device_id=cfg.id,
            bus=bus,
            clock=SystemClock(),
            shared=shared,
            driver_type="modbus",
        )
        drivers.append((d, ctx))

    async def drain() -> None:
        while True:
            await sub.get()

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(drain(), name="bench.drain")]
        tasks += [tg.create_task(d.run(c), name=f"driver[{c.device_id}]") for d, c in drivers]
        while not all(d.online for d, _ in drivers):
            await asyncio.sleep(0.01)
        before = sum(d.polls for d, _ in drivers)
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        polls = sum(d.polls for d, _ in drivers) - before
        elapsed = time.perf_counter() - start
        for t in tasks:
            t.cancel()
    return polls * POINTS / elapsed, bus.published


async def main(units: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench50.yaml"
        profile = bench_profile(path)
        port = free_port()
        sim = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
            [
                sys.executable,
                "-m",
                "firmware_sim",
                "modbus",
                "--profile",
                str(path),
                "--units",
                str(units),
                "--port",
                str(port),
                "--fill-gaps",
                "--vary",
                "0.2",
                "--rate",
                "10",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        try:
            if not wait_for_port("127.0.0.1", port, 20):
                raise SystemExit("simulator did not start")
            # interleaved rounds: each ratio compares measurements taken back to back,
            # so the machine's drift (a shared VM) affects both sides alike
            rounds: dict[str, list[float]] = {"a": [], "b": [], "c": []}
            reports = 0
            for _ in range(ROUNDS):
                rounds["a"].append(await per_point(port, units, profile, seconds / 2))
                rounds["b"].append(await raw_blocks(port, units, profile, seconds))
                c_rate, published = await driver(port, units, path, seconds)
                rounds["c"].append(c_rate)
                reports += published
        finally:
            sim.terminate()
            sim.wait()
    blocks = len(plan(profile.points.values()))
    a, b, c = (statistics.median(rounds[k]) for k in "abc")
    vs_a = statistics.median(c_ / a_ for a_, c_ in zip(rounds["a"], rounds["c"], strict=True))
    vs_b = statistics.median(b_ / c_ for b_, c_ in zip(rounds["b"], rounds["c"], strict=True))
    spread_b = ", ".join(f"{b_ / c_:.2f}" for b_, c_ in zip(rounds["b"], rounds["c"], strict=True))
    print(
        f"{units} devices x {POINTS} points, Modbus TCP on localhost, {blocks} request(s) per "
        f"device poll after planning; {ROUNDS} interleaved rounds of {seconds:g} s (medians)"
    )
    print(f"(a) one request per point (raw pymodbus):       {a:9.0f} points/s")
    print(f"(b) raw pymodbus reads of the planned blocks:   {b:9.0f} points/s")
    print(
        f"(c) cityneuron driver (decode + report):        {c:9.0f} points/s"
        f"  ({reports} readings published)"
    )
    print(f"(c)/(a) = {vs_a:.1f}x  (target >= 10x)")
    print(f"time of (c) relative to (b) = {vs_b:.2f}  (target <= 1.25; rounds: {spread_b})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    asyncio.run(main(args.devices, args.seconds))
