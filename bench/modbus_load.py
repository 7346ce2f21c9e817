"""A peer-style load test: N Modbus TCP devices x P registers polled every T, end to end.

Run:  .venv/bin/python bench/modbus_load.py --devices 20 [--points 50] [--period 0.1]
      [--warmup 15] [--seconds 60] [--rounds 1] [--only poller,node]

Everything runs in its own process, as on a real box: a simulator serving N devices (each
its own TCP port, one unit, P holding registers that all change on every poll), a local
Mosquitto, the system under test and a subscriber that counts the readings delivered.
Two systems, interleaved round by round on the same simulator and broker:

* **poller**: the baseline, a minimal hand-written poller: one asyncio task per device
  reading the P registers with pymodbus every T, one JSON message of P values per poll,
  published with paho QoS 1. Nothing stored, nothing checked: the floor for the load.
* **node**: ``cityneuron run`` with N Modbus devices on a profile of P uint16 registers,
  the durable outbox (``fsync: full``), the rule engine, health and metrics as shipped.

After the warm-up, for `--seconds`: readings delivered at the subscriber against N x P / T
(delivered %), the process's CPU from /proc (% of one core) and its RSS (median), and the
node's CPU relative to the poller's in the same round. ``--profile out.txt`` runs the
node under py-spy (``py-spy record --format raw``) for the measured window;
``MODBUS_LOAD_TRACEMALLOC=/tmp/tm.txt`` under tracemalloc (its allocations by file, half
way through the window); ``MODBUS_LOAD_CPROFILE=/tmp/node.prof`` under cProfile.
``--backlog N`` starts the node with N readings already in its
outbox, as an outage leaves them, and reports how fast they drain while it polls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ME = str(Path(__file__).resolve())
sys.path.insert(0, str(ROOT))

from firmware_sim.broker import MosquittoBroker, free_port, wait_for_port
from firmware_sim.process import until_stopped

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
NODE = "load-1"
TRACEMALLOC = os.environ.get("MODBUS_LOAD_TRACEMALLOC", "")  # where to write, if set
CPROFILE = os.environ.get("MODBUS_LOAD_CPROFILE", "")  # cProfile output of the node, if set


# --- the parts, each run as `python bench/modbus_load.py --role ...` ----------------------


def profile_text(points: int) -> str:
    lines = [f"name: load{points}", "points:"]
    lines += [
        f"  r{i:03d}: {{table: holding_register, address: {i}, type: uint16}}"
        for i in range(points)
    ]
    return "\n".join(lines) + "\n"


async def serve_sim(args: argparse.Namespace) -> None:
    """N devices, each on its own port (one unit), every register changing all the time."""
    from drivers.modbus.profile import load_profile  # noqa: PLC0415
    from firmware_sim.modbus import ModbusSimServer, SimSlave  # noqa: PLC0415

    profile = load_profile(args.profile_yaml)
    names = list(profile.points)
    rate = 10 / args.period  # ten steps per poll: a new value every poll

    def sensor(t: float) -> dict[str, int]:
        step = int(t * rate)
        return {name: (i * 7 + step) % 60000 for i, name in enumerate(names)}

    servers = [
        ModbusSimServer([SimSlave(unit=1, profile=profile, sensor=sensor)], port=port)
        for port in args.ports
    ]
    for server in servers:
        await server.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await until_stopped()
    for server in servers:
        await server.stop()


async def run_poller(args: argparse.Namespace) -> None:
    """The baseline: pymodbus read + one JSON message per poll + paho QoS 1 publish."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415
    from pymodbus.client import AsyncModbusTcpClient  # noqa: PLC0415

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="poller")
    client.max_inflight_messages_set(20)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", args.broker)
    client.loop_start()

    async def device(index: int, port: int) -> None:
        modbus = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        await modbus.connect()
        topic = f"poller/telemetry/dev-{index}"
        due = time.monotonic()
        while True:
            resp = await modbus.read_holding_registers(0, count=args.points, device_id=1)
            values = {f"r{i:03d}": v for i, v in enumerate(resp.registers)}
            body = {"device": f"dev-{index}", "ts": time.time(), "values": values}
            client.publish(topic, json.dumps(body), qos=1)
            due += args.period
            delay = due - time.monotonic()
            if delay < 0:
                due = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)

    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(device(i, port), name=f"poller[{i}]")
            for i, port in enumerate(args.ports)
        ]
        await until_stopped()
        for task in tasks:
            task.cancel()
    client.loop_stop()


async def run_subscriber(args: argparse.Namespace) -> None:
    """Count readings delivered (a node's polls or readings, a poller's `values`); print the
    running total every 0.25 s."""
    import aiomqtt  # noqa: PLC0415

    total = old = 0

    async def report() -> None:
        while True:
            sys.stdout.write(f"{time.monotonic():.3f} {total} {old}\n")
            sys.stdout.flush()
            await asyncio.sleep(0.25)

    async with aiomqtt.Client("127.0.0.1", args.broker, max_queued_incoming_messages=0) as c:
        await c.subscribe(args.topic, qos=1)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(report(), name="subscriber.report")
            async for message in c.messages:
                body = json.loads(message.payload)
                if "polls" in body:  # telemetry format 2
                    n = sum(len(poll["points"]) for poll in body["polls"])
                else:
                    n = len(body.get("readings") or body.get("values") or ())
                if body.get("device") == "backlog":
                    old += n  # stored before the node started: the drain
                else:
                    total += n


def node_config(
    work: Path,
    broker: int,
    ports: Sequence[int],
    period: float,
    inflight: int = 0,
    event_loop: str = "auto",
    commit_interval: float = 0.0,
) -> Path:
    devices = "".join(
        f"""  - type: modbus
    id: dev-{i}
    profile: {work / "load.yaml"}
    unit: 1
    connection: {{kind: tcp, host: 127.0.0.1, port: {port}}}
    poll_interval: {period * 1000:g}ms
    report: {{mode: on_change}}
"""
        for i, port in enumerate(ports)
    )
    text = f"""node:
  id: {NODE}
  data_dir: {work / "data"}
  event_loop: {event_loop}
log: {{level: warning}}
http: {{enabled: true, port: {free_port()}}}
discovery: {{enabled: false}}
mqtt:
  host: 127.0.0.1
  port: {broker}
  tls: {{enabled: false}}
{f"  max_inflight: {inflight}" if inflight else ""}
{f"outbox: {{commit_interval: {commit_interval * 1000:g}ms}}" if commit_interval else ""}
devices:
{devices}"""
    path = work / "node.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Result:
    system: str
    expected: float  # readings in the window
    delivered: int
    cpu_pct: float
    rss_mb: float
    sys_pct: float = 0.0  # the part of cpu_pct spent in the kernel

    @property
    def share(self) -> float:
        return self.delivered / self.expected if self.expected else 0.0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of `pid` so far (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(stat[11]) / TICK, int(stat[12]) / TICK


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


class Counter:
    """The subscriber process and the last total it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.total = 0
        self.backlog = 0  # readings of the stored backlog delivered
        self.backlog_done = 0.0  # when the last of it arrived (monotonic)

    async def follow(self, backlog: int = 0) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            _, total, old = line.split()
            self.total = int(total)
            if int(old) != self.backlog:
                self.backlog = int(old)
                if backlog and self.backlog >= backlog and not self.backlog_done:
                    self.backlog_done = time.monotonic()


async def spawn(*argv: str, stdout: int | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv, stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT
    )


async def stop(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()
    err = await proc.stderr.read() if proc.stderr else b""
    return err.decode(errors="replace")[-3000:]


async def measure(
    system: str, args: argparse.Namespace, work: Path, broker: int, ports: list[int]
) -> Result:
    topic = f"cityneuron/v1/{NODE}/telemetry/#" if system == "node" else "poller/telemetry/#"
    sub = await spawn(
        sys.executable, ME, "--role", "subscriber", "--broker", str(broker), "--topic", topic,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    counter = Counter(sub)
    follower = asyncio.create_task(
        counter.follow(args.backlog if system == "node" else 0), name="bench.follow"
    )
    await asyncio.sleep(1.0)  # subscribed before the first message
    ports_arg = [str(p) for p in ports]
    if system == "node":
        shutil.rmtree(work / "data", ignore_errors=True)
        if args.backlog:
            await asyncio.to_thread(fill_backlog, work / "data" / "outbox.db", args.backlog)
        cfg = node_config(
            work, broker, ports, args.period, args.inflight, args.event_loop, args.commit_interval
        )
        started = time.monotonic()
        launch = [str(ROOT / ".venv" / "bin" / "cityneuron")]
        if TRACEMALLOC:  # the node's Python allocations by file, written after the warm-up
            from footprint import TRACED_NODE  # noqa: PLC0415

            launch = [sys.executable, "-X", "tracemalloc=1", "-c", TRACED_NODE, TRACEMALLOC,
                      str(args.warmup + args.seconds / 2)]  # fmt: skip
        elif CPROFILE:
            launch = [sys.executable, "-m", "cProfile", "-o", CPROFILE, *launch]
        proc = await spawn(*launch, "run", "--config", str(cfg))
    else:
        proc = await spawn(
            sys.executable, ME, "--role", "poller", "--broker", str(broker),
            "--points", str(args.points), "--period", str(args.period), "--ports", *ports_arg,
        )  # fmt: skip
    spy: asyncio.subprocess.Process | None = None
    if system != "node":
        cfg = work / "none.yaml"
    try:
        await asyncio.sleep(args.warmup)
        if proc.returncode is not None:
            raise SystemExit(f"{system} exited early: {await stop(proc)}")
        if system == "node" and args.profile:
            spy = await spawn(
                str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--pid", str(proc.pid),
                "--format", "raw", "--rate", "200", "--duration", str(int(args.seconds)),
                "--output", args.profile, "--nonblocking",
            )  # fmt: skip
        c0, n0, t0 = cpu_seconds(proc.pid), counter.total, time.monotonic()
        rss: list[float] = []
        while time.monotonic() - t0 < args.seconds:
            await asyncio.sleep(1.0)
            rss.append(rss_mb(proc.pid))
        c1, n1, t1 = cpu_seconds(proc.pid), counter.total, time.monotonic()
        health = await node_health(cfg) if system == "node" else {}
    finally:
        err = await stop(proc)
        if spy is not None:
            await spy.wait()
        await asyncio.sleep(0.5)
        await stop(sub)
        follower.cancel()
    if system == "node" and "Traceback" in err:
        print(f"node stderr:\n{err}", file=sys.stderr)
    expected = len(ports) * args.points / args.period * (t1 - t0)
    wall = t1 - t0
    if system == "node" and args.backlog:
        if counter.backlog_done:
            took = counter.backlog_done - started
            print(
                f"backlog: {args.backlog:,} readings drained in {took:.1f} s from the node's "
                f"start = {args.backlog / took:,.0f} readings/s"
            )
        else:
            print(f"backlog: only {counter.backlog:,} of {args.backlog:,} delivered in the run")
    if health:
        print(
            "node: polls skipped "
            f"{health.get('cityneuron_driver_skipped_polls_total', 0):.0f}, bus drops "
            f"{health.get('cityneuron_bus_dropped_total', 0):.0f}, outbox evicted "
            f"{health.get('cityneuron_outbox_evicted_total', 0):.0f}, loop lag "
            f"{health.get('cityneuron_event_loop_lag_seconds', 0) * 1000:.0f} ms"
        )
    return Result(
        system,
        expected,
        n1 - n0,
        (sum(c1) - sum(c0)) / wall * 100,
        statistics.median(rss),
        (c1[1] - c0[1]) / wall * 100,
    )


def fill_backlog(db: Path, readings: int) -> None:
    """An outbox holding `readings` readings of device "backlog" (messages of 100), as a
    node leaves it after an outage."""
    from gateway.kernel.records import Quality, ReadingBatch  # noqa: PLC0415
    from gateway.outbox import OutboxStore, pack  # noqa: PLC0415

    store = OutboxStore(db, max_bytes=4 * 2**30, fsync="normal")
    try:
        per_commit = 100_000
        for start in range(0, readings, per_commit):
            batches = [
                ReadingBatch(
                    device="backlog",
                    points=tuple(f"r{i:03d}" for i in range(50)),
                    values=tuple(range(j, j + 50)),
                    units=(None,) * 50,
                    qualities=(Quality.GOOD,) * 50,
                    node=NODE,
                )
                for j in range(start, min(readings, start + per_commit), 50)
            ]
            store.commit(pack(batches, NODE, 100, time.time()), ())
    finally:
        store.close()


async def node_health(cfg: Path) -> dict[str, float]:
    """Sums of a few of the node's metrics (over their labels)."""
    import aiohttp  # noqa: PLC0415
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    text = await asyncio.to_thread(cfg.read_text)
    port = int(text.split("http: {enabled: true, port: ")[1].split("}")[0])
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        for family in text_string_to_metric_families(await r.text()):
            for sample in family.samples:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def per_reading(result: Result, seconds: float) -> float:
    """CPU microseconds per delivered reading."""
    return result.cpu_pct / 100 * seconds / max(result.delivered, 1) * 1e6


async def bench(args: argparse.Namespace) -> None:
    systems = [s for s in ("poller", "node") if s in args.only.split(",")]
    with tempfile.TemporaryDirectory(prefix="modbus-load-") as tmp, contextlib.ExitStack() as st:
        work = Path(tmp)
        (work / "load.yaml").write_text(profile_text(args.points), encoding="utf-8")
        broker = st.enter_context(MosquittoBroker(workdir=work))
        ports: list[int] = []
        while len(ports) < args.devices:  # distinct, even if the OS hands one out twice
            if (port := free_port()) not in ports:
                ports.append(port)
        sim = await spawn(
            sys.executable, ME, "--role", "sim", "--profile-file", str(work / "load.yaml"),
            "--period", str(args.period), "--ports", *map(str, ports), stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert sim.stdout is not None
            await asyncio.wait_for(sim.stdout.readline(), 60)
            for port in ports:
                if not wait_for_port("127.0.0.1", port, 10):
                    err = await stop(sim)
                    raise SystemExit(f"simulator port {port} did not open: {err}")
            print(
                f"{args.devices} devices x {args.points} registers every "
                f"{args.period * 1000:g} ms = {args.devices * args.points / args.period:,.0f} "
                f"readings/s; warm-up {args.warmup:g} s, window {args.seconds:g} s"
            )
            for r in range(args.rounds):
                results = {s: await measure(s, args, work, broker.port, ports) for s in systems}
                for res in results.values():
                    print(
                        f"round {r + 1} {res.system:>6}: {res.share * 100:5.1f} % delivered "
                        f"({res.delivered / args.seconds:,.0f} readings/s), "
                        f"CPU {res.cpu_pct:5.1f} % (kernel {res.sys_pct:.1f}), "
                        f"RSS {res.rss_mb:.0f} MB"
                    )
                if len(results) == 2:
                    node, poller = results["node"], results["poller"]
                    print(
                        f"round {r + 1}  ratio: node CPU / poller CPU = "
                        f"{node.cpu_pct / poller.cpu_pct:.2f} (target <= 1.25); CPU per "
                        f"delivered reading: node {per_reading(node, args.seconds):.1f} us, "
                        f"poller {per_reading(poller, args.seconds):.1f} us"
                    )
        finally:
            await stop(sim)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=["bench", "sim", "poller", "subscriber"], default="bench")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--points", type=int, default=50)
    parser.add_argument("--period", type=float, default=0.1, help="poll period, seconds")
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", default="poller,node")
    parser.add_argument("--profile", help="py-spy raw output of the node for the window")
    parser.add_argument("--inflight", type=int, default=0, help="the node's mqtt.max_inflight")
    parser.add_argument(
        "--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto",
        help="the node's node.event_loop",
    )  # fmt: skip
    parser.add_argument(
        "--commit-interval", type=float, default=0.0,
        help="the node's outbox.commit_interval in seconds (default: the node's own)",
    )  # fmt: skip
    parser.add_argument(
        "--backlog", type=int, default=0,
        help="start the node with this many readings already in its outbox (an outage's)",
    )  # fmt: skip
    parser.add_argument("--ports", type=int, nargs="*", default=[])
    parser.add_argument("--broker", type=int, default=0)
    parser.add_argument("--topic", default="")
    parser.add_argument("--profile-file", dest="profile_yaml", default="")
    args = parser.parse_args(argv)
    if args.role == "sim":
        asyncio.run(serve_sim(args))
    elif args.role == "poller":
        asyncio.run(run_poller(args))
    elif args.role == "subscriber":
        asyncio.run(run_subscriber(args))
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
