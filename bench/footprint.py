"""Footprint of a real node: memory, CPU and start-up in three configurations.

Run:  .venv/bin/python bench/footprint.py [--minutes 5] [--only a,b,c]

Each configuration starts ``cityneuron run`` as its own process with a YAML config, next to
a local Mosquitto, four simulated Modbus TCP devices polled every second and a GPS on a
serial pseudo-terminal (5 fixes/s, ``--gps-hz``):

* (a) Modbus + GPS, no camera;
* (b) (a) plus one 640x480 camera at 5 frames/s (the simulated IP camera showing the
  inspection drive of ``firmware_sim.road``) through the road model, motion gate on;
* (c) (b) with the uplink down for the whole run (the broker's port is closed).

Measured from /proc: steady RSS (median over the last minute), peak RSS (VmHWM), CPU of one
core averaged over the last 60 s, the time from process start to the first reading
published (to the outbox for (c)), and the RSS growth between minute 1 and the end. The
baseline, measured in the same run, is a bare Python interpreter idling in an asyncio loop;
results are printed against it and against the budget of issue #10.

Where the memory and CPU go: every line carries the resident memory by mapping (anonymous,
and the largest shared libraries); ``FOOTPRINT_TRACEMALLOC=/tmp/tm`` runs the node under
tracemalloc and writes its Python allocations by file to ``/tmp/tm-<config>.txt`` (the
node starts slower so); ``FOOTPRINT_PROFILE=/tmp/prof`` runs it under cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiomqtt
import cv2

from drivers.modbus.profile import load_profile
from firmware_sim.broker import MosquittoBroker, free_port
from firmware_sim.camera import CameraServer
from firmware_sim.city import DustNoise, Hydrant, ManholeCover, RiverGauge
from firmware_sim.modbus import ModbusSimServer, SimSlave
from firmware_sim.pty import PtyPair
from firmware_sim.road import drive, render, street
from firmware_sim.serial_devices import GpsReceiver

PROFILE = os.environ.get("FOOTPRINT_PROFILE", "")  # cProfile output of the node, if set
TRACEMALLOC = os.environ.get("FOOTPRINT_TRACEMALLOC", "")  # Python allocations, if set
# The node under tracemalloc: Python's allocations by file and the largest allocation sites,
# written to a file before the end (module code and globals show as the import machinery's).
TRACED_NODE = """
import sys, threading, time, tracemalloc
out, after = sys.argv[1], float(sys.argv[2])
def dump():
    time.sleep(after)
    snap = tracemalloc.take_snapshot()
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"Python allocations: {current / 2**20:.1f} MB (peak {peak / 2**20:.1f} MB)"]
    lines += [f"{s.size / 2**20:8.2f} MB  {s.traceback[0].filename}"
              for s in snap.statistics("filename")[:25]]
    lines.append("largest sites:")
    lines += [f"{s.size / 2**20:8.2f} MB {s.count:8d} blocks  {s.traceback[0]}"
              for s in snap.statistics("lineno")[:15]]
    with open(out, "w") as f:
        f.write("\\n".join(lines) + "\\n")
threading.Thread(target=dump, daemon=True, name="tracemalloc-dump").start()
sys.argv = ["cityneuron", *sys.argv[3:]]
from gateway.cli import main
main()
"""
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
MODEL = ROOT / "models" / "zoo" / "road_defect"
BUDGET = {"a": {"rss": 80.0, "cpu": 2.0}, "b": {"rss": 160.0}, "c": {"rss": 160.0}}
DEVICES: list[tuple[str, str, int, Callable[[float], dict[str, Any]]]] = [
    ("manhole-1", "manhole_cover", 1, ManholeCover(open_from=20, open_until=35)),
    ("river-gauge", "river_level", 2, RiverGauge(storm_from=10, storm_until=60)),
    ("site-dust", "dust_noise", 3, DustNoise(busy=((15, 45),))),
    ("hydrant-7", "hydrant_pressure", 4, Hydrant(open_windows=((40, 50),))),
]


@dataclass
class Sample:
    t: float  # seconds since start
    rss_mb: float
    cpu_s: float


@dataclass
class Result:
    name: str
    steady_mb: float
    peak_mb: float
    cpu_pct: float
    first_reading_s: float | None
    growth_pct: float | None
    breakdown: str = ""
    cpu_minutes: tuple[float, ...] = ()  # CPU % of each whole minute after the first


def cpu_share(window: list[Sample]) -> float:
    """CPU time over wall time between the first and the last sample (1.0 = one core)."""
    return (window[-1].cpu_s - window[0].cpu_s) / (window[-1].t - window[0].t)


def proc_sample(pid: int, t0: float) -> Sample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    cpu = (int(stat[11]) + int(stat[12])) / TICK  # utime + stime
    return Sample(time.monotonic() - t0, int(statm[1]) * PAGE / 2**20, cpu)


def where(pid: int) -> str:
    """Resident memory by mapping: anonymous (Python objects, malloc arenas, onnxruntime's
    buffers) and the largest shared libraries (file-backed, shared with other processes)."""
    by: dict[str, int] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
            name = Path(parts[5]).name if len(parts) > 5 and parts[5].startswith("/") else "anon"
        elif parts[0] == "Rss:":
            by[name] = by.get(name, 0) + int(parts[1])
    anon = by.pop("anon", 0)
    libs = sorted(by.items(), key=lambda kv: -kv[1])
    top = ", ".join(f"{n.split('.')[0]} {kb / 1024:.0f}" for n, kb in libs[:5])
    return (
        f"anonymous {anon / 1024:.0f} MB, files {sum(by.values()) / 1024:.0f} MB (largest: {top})"
    )


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def config(
    workdir: Path,
    name: str,
    broker_port: int,
    sim_port: int,
    gps: str,
    camera: str | None,
    model: Path,
) -> Path:
    devices = "".join(
        f"""  - type: modbus
    id: {d}
    profile: {p}
    unit: {u}
    connection: {{kind: tcp, host: 127.0.0.1, port: {sim_port}}}
    poll_interval: 1s
    report: {{mode: both, period: 30s}}
"""
        for d, p, u, _ in DEVICES
    )
    devices += f"""  - type: serial
    id: gps
    profile: nmea_gps
    port: {gps}
    report: {{mode: both, period: 2s, min_interval: 1s}}
"""
    models = ""
    if camera is not None:
        devices += f"""  - type: camera
    id: road-cam
    source: {camera}
    fps: 5
    model: road
    motion: {{enabled: true}}
"""
        models = f"models:\n  packages: {{road: {model}}}\n  threads: 1\n"
    text = f"""node:
  id: footprint-{name}
  data_dir: {workdir / "data"}
log: {{level: warning}}
location: {{source: gps}}
http: {{enabled: true, port: {free_port()}}}
discovery: {{enabled: true, interfaces: [127.0.0.1]}}
mqtt:
  host: 127.0.0.1
  port: {broker_port}
  tls: {{enabled: false}}
{models}devices:
{devices}"""
    path = workdir / "node.yaml"
    path.write_text(text)
    return path


async def first_published(port: int, node: str, arrived: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"cityneuron/v1/{node}/telemetry/#", qos=1)
        async for _ in client.messages:
            arrived.set()
            return


def outbox_has_rows(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
            return bool(c.execute("SELECT count(*) FROM messages").fetchone()[0])
    except sqlite3.Error:
        return False


async def measure(
    name: str, seconds: float, camera_url: str | None, uplink: bool, gps_hz: float, model: Path
) -> Result:
    with (
        tempfile.TemporaryDirectory(prefix=f"footprint-{name}-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        broker = stack.enter_context(MosquittoBroker(workdir=work))
        broker_port = broker.port if uplink else free_port()
        slaves = [SimSlave(unit=u, profile=load_profile(p), sensor=s) for _, p, u, s in DEVICES]
        async with ModbusSimServer(slaves) as sim, asyncio.TaskGroup() as tg:
            gps_pty = stack.enter_context(PtyPair(work, "gps"))
            gps = GpsReceiver(str(gps_pty.device), rate_hz=gps_hz)
            gps_task = tg.create_task(gps.run(), name="bench.gps")
            path = config(work, name, broker_port, sim.port, str(gps_pty.host), camera_url, model)
            arrived = asyncio.Event()
            watcher = None
            if uplink:
                watcher = tg.create_task(
                    first_published(broker.port, f"footprint-{name}", arrived), name="bench.sub"
                )
                await asyncio.sleep(0.5)  # subscribed before the node starts
            t0 = time.monotonic()
            if TRACEMALLOC:
                out = f"{TRACEMALLOC}-{name}.txt"
                launch = [
                    "-X",
                    "tracemalloc=1",
                    "-c",
                    TRACED_NODE,
                    out,
                    str(max(seconds - 40, seconds / 2)),
                ]
            else:
                profile = ["-m", "cProfile", "-o", PROFILE] if PROFILE else []
                launch = [*profile, str(ROOT / ".venv" / "bin" / "cityneuron")]
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *launch,
                "run",
                "--config",
                str(path),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            first: float | None = None
            samples: list[Sample] = []
            try:
                while time.monotonic() - t0 < seconds:
                    if first is None:
                        done = (
                            arrived.is_set()
                            if uplink
                            else outbox_has_rows(work / "data" / "outbox.db")
                        )
                        if done:
                            first = time.monotonic() - t0
                    s = proc_sample(proc.pid, t0)
                    if s is None or proc.returncode is not None:
                        err = (await proc.stderr.read()).decode() if proc.stderr else ""
                        raise SystemExit(f"({name}) the node exited: {err[-2000:]}")
                    samples.append(s)
                    await asyncio.sleep(0.05 if first is None else 1.0)
                peak = peak_mb(proc.pid)
                breakdown = where(proc.pid)
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                gps_task.cancel()
                if watcher is not None:
                    watcher.cancel()
    end = samples[-1].t
    last_minute = [s for s in samples if s.t >= end - 60]
    cpu = cpu_share(last_minute)
    steady = statistics.median(s.rss_mb for s in last_minute)
    growth = None
    if end >= 120:
        minute1 = statistics.median(s.rss_mb for s in samples if 60 <= s.t < 70)
        final = statistics.median(s.rss_mb for s in samples if s.t >= end - 10)
        growth = (final - minute1) / minute1 * 100
    windows = (
        [s for s in samples if 60 * m <= s.t <= 60 * (m + 1)] for m in range(1, int(end // 60))
    )
    minutes = [cpu_share(w) for w in windows if len(w) >= 2]
    return Result(
        name, steady, peak, cpu * 100, first, growth, breakdown, tuple(m * 100 for m in minutes)
    )


async def bare_python(seconds: float) -> Result:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import asyncio; asyncio.run(asyncio.sleep(3600))"
    )
    samples = []
    try:
        while time.monotonic() - t0 < seconds:
            s = proc_sample(proc.pid, t0)
            if s is not None:
                samples.append(s)
            await asyncio.sleep(0.5)
        peak = peak_mb(proc.pid)
    finally:
        proc.kill()
        await proc.wait()
    cpu = cpu_share(samples[1:])
    return Result("bare", samples[-1].rss_mb, peak, cpu * 100, None, None)


def road_frames(folder: Path, n: int = 150) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    s = street(seed=1)
    for i, view in enumerate(drive(s, speed=8.0, fps=5.0)):
        if i >= n:
            break
        cv2.imwrite(str(folder / f"{i:04d}.jpg"), render(s, view))
    return folder


def line(r: Result, bare: Result) -> str:
    budget = BUDGET.get(r.name, {})
    rss_budget = f" (budget {budget['rss']:.0f})" if "rss" in budget else ""
    cpu_budget = f" (budget {budget['cpu']:.0f}%)" if "cpu" in budget else ""
    first = f"{r.first_reading_s:.2f} s" if r.first_reading_s is not None else "n/a"
    growth = f"{r.growth_pct:+.1f}%" if r.growth_pct is not None else "n/a (run < 2 min)"
    return (
        f"({r.name}) steady RSS {r.steady_mb:.1f} MB{rss_budget}, "
        f"{r.steady_mb / bare.steady_mb:.1f}x bare Python; peak {r.peak_mb:.1f} MB; "
        f"CPU {r.cpu_pct:.2f}% of one core{cpu_budget}"
        + (
            f" (minute by minute after the first: {' '.join(f'{c:.2f}' for c in r.cpu_minutes)})"
            if len(r.cpu_minutes) > 1
            else ""
        )
        + "; "
        f"start to first reading {first} (budget 3 s); RSS growth minute 1 -> end {growth}"
        + (f"\n    resident: {r.breakdown}" if r.breakdown else "")
    )


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=5.0, help="run time per configuration")
    ap.add_argument("--only", default="a,b,c", help="configurations to run")
    ap.add_argument("--gps-hz", type=float, default=5.0, help="GPS fixes per second")
    ap.add_argument("--model", type=Path, default=MODEL, help="model package for (b), (c)")
    args = ap.parse_args()
    seconds = args.minutes * 60
    if not (args.model / "model.yaml").exists() and set(args.only) & {"b", "c"}:
        raise SystemExit(f"{args.model}: the road model package is missing")
    bare = await bare_python(10)
    print(
        f"baseline: bare Python asyncio idle RSS {bare.steady_mb:.1f} MB, CPU {bare.cpu_pct:.2f}%"
    )
    with tempfile.TemporaryDirectory(prefix="footprint-frames-") as tmp:
        folder = road_frames(Path(tmp) / "frames")
        with CameraServer(fps=5, folder=folder) as camera:
            for name in args.only.split(","):
                cam = camera.url if name in ("b", "c") else None
                result = await measure(
                    name, seconds, cam, uplink=name != "c", gps_hz=args.gps_hz, model=args.model
                )
                print(line(result, bare), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
