"""``cityneuron demo``: a simulated node, a local broker, and what the node sends upstream.

Everything is real: a Mosquitto broker on a free local port, simulated Modbus devices
served by pymodbus from `firmware_sim`, the gateway loading a YAML config written to the
demo's directory, and an MQTT subscriber standing in for the city's back end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import aiomqtt

from drivers.modbus.profile import load_profile
from firmware_sim.broker import BrokerStartError, MosquittoBroker
from firmware_sim.city import DustNoise, Hydrant, ManholeCover, RiverGauge
from firmware_sim.modbus import ModbusSimServer, SimSlave
from firmware_sim.pty import PtyPair
from firmware_sim.road import StreetRoute, street, write_video
from firmware_sim.serial_devices import GpsReceiver, RainGauge
from gateway.config import ConfigError, load_config
from gateway.kernel.records import Reading

if TYPE_CHECKING:
    from gateway.app import Gateway

logger = logging.getLogger(__name__)

NODE_ID = "demo-sweeper-3"

DEVICES: list[tuple[str, str, int, Callable[[float], dict[str, Any]]]] = [
    ("manhole-1", "manhole_cover", 1, ManholeCover(open_from=20, open_until=35)),
    ("river-gauge", "river_level", 2, RiverGauge(storm_from=10, storm_until=60)),
    ("site-dust", "dust_noise", 3, DustNoise(busy=((15, 45),))),
    ("hydrant-7", "hydrant_pressure", 4, Hydrant(open_windows=((40, 50),))),
]

CONFIG = """\
# Written by `cityneuron demo`: a node on a municipal vehicle reading four simulated city
# devices over Modbus TCP, a GPS receiver and a rain gauge on serial lines.
node:
  id: {node}
  name: Demo node on street-sweeper 3
  groups: [demo-district]
  data_dir: {data}
location:
  source: gps
  stale_after: 5s
rules:
  file: {rules}
log:
  level: warning
mqtt:
  host: 127.0.0.1
  port: {broker_port}
  tls: {{enabled: false}}   # a local demo broker; keep TLS on in the field
outbox:
  commit_interval: 50ms
devices:
{devices}
"""

ROAD = """\
  - type: camera
    id: road-cam
    source: {video}
    fps: 5
    loop: true
    model: road
    motion: {{enabled: false}}
    snapshot: {{enabled: true, min_interval: 0.4s}}
"""

INSPECTION = """\
models:
  packages: {{road: {model}}}
  threads: 1
inspection:
  enabled: true
  cameras: [road-cam]
  radius: 12
  gap: 2s
  ahead: 4
"""

SERIAL = """\
  - type: serial
    id: gps
    profile: nmea_gps
    port: {gps_port}
    report: {{mode: both, period: 2s, min_interval: 1s}}
  - type: serial
    id: rain-gauge
    profile: rain_gauge
    port: {rain_port}
    report: {{mode: on_change}}
"""

DEVICE = """\
  - type: modbus
    id: {id}
    profile: {profile}
    unit: {unit}
    connection: {{kind: tcp, host: 127.0.0.1, port: {port}}}
    poll_interval: 1s
    report: {{mode: both, period: 30s}}
"""


class Viewer:
    """Prints what the back end receives, one line per message."""

    def __init__(self, out: TextIO, node: str) -> None:
        self.out = out
        self.node = node
        self.messages = 0
        self.readings = 0
        self.events = 0
        self.detections = 0
        self.seqs: list[int] = []

    def show(self, topic: str, payload: bytes) -> None:
        self.messages += 1
        rel = topic.split(f"/{self.node}/", 1)[-1]
        now = time.strftime("%H:%M:%S")
        if rel.startswith("snapshots/"):
            self._line(f"{now}  picture    {rel} ({len(payload) // 1024} KB JPEG)")
            return
        try:
            body = json.loads(payload)
        except ValueError:
            body = {}
        if isinstance(body, dict) and isinstance(body.get("seq"), int):
            self.seqs.append(body["seq"])
        if rel == "status":
            self._line(f"{now}  status     {self.node} is {body.get('state')}")
        elif rel.startswith("telemetry/"):
            readings = _readings(body)
            self.readings += len(readings)
            values = "  ".join(_fmt(r) for r in readings)
            device = body.get("device", "?")
            self._line(f"{now}  telemetry  {device:<12} #{body.get('seq')}  {values}")
        elif rel == "events/detection":
            self.detections += 1  # many per second: counted, the defect reports are shown
        elif rel.startswith("events/"):
            self.events += 1
            kind = rel.split("/", 1)[1]
            source = body.get("source", "?")
            message = body.get("message") or ""
            line = f"{now}  EVENT      {source:<12} #{body.get('seq')}  {kind} {message}"
            where = body.get("location") or {}
            if where.get("valid"):
                line = f"{line.rstrip()}  @ {where['lat']:.5f},{where['lon']:.5f}"
            self._line(line.rstrip())
        else:
            self._line(f"{now}  {rel}  {payload[:120]!r}")

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _readings(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A telemetry message's readings, in either format (docs/mqtt-api.md)."""
    if body.get("format") != 2:
        return list(body.get("readings", []))
    return [
        {"point": p, "value": v, "unit": u, "quality": q}
        for poll in body.get("polls", [])
        for p, v, u, q in zip(
            poll["points"], poll["values"], poll["units"], poll["quality"], strict=False
        )
    ]


def _fmt(reading: dict[str, Any]) -> str:
    value = reading.get("value")
    unit = reading.get("unit") or ""
    quality = "" if reading.get("quality") == "good" else f"({reading.get('quality')})"
    return f"{reading.get('point')}={value}{unit}{quality}"


async def _watch(broker: MosquittoBroker, viewer: Viewer, subscribed: asyncio.Event) -> None:
    """The back end: subscribe to everything the node publishes and show it."""
    while True:
        try:
            async with aiomqtt.Client(
                broker.host, broker.port, identifier="demo-backend"
            ) as client:
                await client.subscribe(f"cityneuron/v1/{viewer.node}/#", qos=1)
                subscribed.set()
                async for message in client.messages:
                    payload = message.payload
                    viewer.show(
                        str(message.topic),
                        payload if isinstance(payload, bytes) else str(payload).encode(),
                    )
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


async def _demo(workdir: Path, duration: float | None, out: TextIO) -> int:
    from gateway.app import Gateway  # noqa: PLC0415 - keep `cityneuron --help` light

    with ExitStack() as stack:
        broker = stack.enter_context(MosquittoBroker(workdir=workdir))
        async with AsyncExitStack() as astack:
            slaves = [
                SimSlave(unit=unit, profile=load_profile(profile), sensor=sensor)
                for _, profile, unit, sensor in DEVICES
            ]
            slaves[1].set("serial_number", "RL-DEMO-01")
            sim = await astack.enter_async_context(ModbusSimServer(slaves))
            gps_pty = stack.enter_context(PtyPair(workdir, "gps"))
            rain_pty = stack.enter_context(PtyPair(workdir, "rain"))
            road = _road_drive(workdir, out)
            gps = GpsReceiver(str(gps_pty.device), rate_hz=5, route=road[1] if road else None)
            rain = RainGauge(str(rain_pty.device), rate_hz=1, storm=(10, 60))
            config_path = workdir / "node.yaml"
            devices = "".join(
                DEVICE.format(id=d, profile=p, unit=u, port=sim.port) for d, p, u, _ in DEVICES
            ) + SERIAL.format(gps_port=gps_pty.host, rain_port=rain_pty.host)
            text = CONFIG.format(
                node=NODE_ID,
                rules=resources.files("rules") / "examples" / "city.yaml",
                data=workdir / "data",
                broker_port=broker.port,
                devices=devices + (ROAD.format(video=road[0]) if road else ""),
            )
            if road:
                text += INSPECTION.format(model=ROAD_MODEL)
            config_path.write_text(text, encoding="utf-8")
            try:
                config = load_config(config_path)
            except ConfigError as exc:  # the demo's own config: a bug if this happens
                out.write(f"demo config is invalid:\n{exc}\n")
                return 1
            viewer = Viewer(out, config.node.id)
            out.write(
                f"cityneuron demo: node {config.node.id}, broker 127.0.0.1:{broker.port}, "
                f"{len(DEVICES)} simulated Modbus devices on 127.0.0.1:{sim.port}, "
                f"a GPS and a rain gauge on serial lines ({gps_pty.host.parent})\n"
                f"config: {config_path}\n"
                "the manhole lid is lifted at 20-35 s, a storm raises the river from 10 s, "
                "the hydrant is opened at 40-50 s; "
                + (
                    f"the sweeper's camera inspects Rua dos Andradas, {road[1].period:.0f} s a "
                    "drive, again and again: each crack and pothole is reported once, then "
                    "updated on every later drive.\n"
                    if road
                    else "the vehicle drives a loop through the streets of central Porto Alegre.\n"
                )
                + "Ctrl-C stops.\n\n"
            )
            out.flush()
            gw = Gateway(config)
            subscribed = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                watcher = tg.create_task(_watch(broker, viewer, subscribed), name="demo.backend")
                await subscribed.wait()
                runner = tg.create_task(gw.run(), name="gateway")
                sims = [tg.create_task(rain.run(), name="demo.rain-gauge")]
                # the GPS drives in step with the camera's video of the same drive
                epoch = await _video_playing(gw, "road-cam", runner) if road else None
                sims.append(tg.create_task(gps.run(epoch=epoch), name="demo.gps"))
                if duration is not None:
                    loop = asyncio.get_running_loop()
                    timer = loop.call_later(duration, gw.request_stop)
                    runner.add_done_callback(lambda _: timer.cancel())
                await runner
                await asyncio.sleep(0.3)  # let the last messages and the offline status in
                watcher.cancel()
                for task in sims:
                    task.cancel()
            outbox = gw.outbox.stats if gw.outbox else None
            out.write(
                f"\nreceived {viewer.messages} message(s): {viewer.readings} reading(s), "
                f"{viewer.events} event(s), {viewer.detections} detection(s); sequence numbers "
                f"{min(viewer.seqs, default=0)}..{max(viewer.seqs, default=0)}; "
                f"{outbox.messages if outbox else 0} message(s) left in the outbox\n"
            )
    return 0


async def _video_playing(gw: Gateway, camera: str, node: asyncio.Task[None]) -> float | None:
    """When (time.monotonic) the first frame of `camera`'s video file was played; None if
    the `node` stopped before."""
    from drivers.camera.source import FrameSource  # noqa: PLC0415 - OpenCV, with the camera

    name = f"driver[{camera}]"
    while not node.done():  # only until the video starts, a second or two
        driver = next((getattr(c, "driver", None) for c in gw.components if c.name == name), None)
        source = getattr(driver, "source", None)
        if isinstance(source, FrameSource) and source.playing_since is not None:
            return source.playing_since
        await asyncio.sleep(0.01)
    return None


ROAD_MODEL = Path(str(resources.files("models") / "zoo" / "road_defect"))


def _road_drive(workdir: Path, out: TextIO) -> tuple[Path, StreetRoute] | None:
    """The inspection drive's video and GPS route, when the road model is installed."""
    if not (ROAD_MODEL / "model.yaml").is_file():
        out.write("(no road model installed: the demo runs without the inspection camera)\n")
        return None
    s = street(seed=1)
    route = StreetRoute(s)
    video = workdir / "inspection-drive.avi"
    out.write("rendering the inspection drive's video ... ")
    out.flush()
    frames = write_video(video, s, speed=route.speed, fps=route.fps)
    out.write(f"{frames} frames, {len(s.defects)} defects on the street\n")
    return video, route


def run_demo(duration: float | None = None, workdir: Path | None = None) -> int:
    """Entry point of ``cityneuron demo``; returns the exit status."""
    from gateway.logs import setup_logging  # noqa: PLC0415

    setup_logging("warning")
    out = sys.stdout
    try:
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            return asyncio.run(_demo(workdir, duration, out))
        with tempfile.TemporaryDirectory(prefix="cityneuron-demo-") as tmp:
            return asyncio.run(_demo(Path(tmp), duration, out))
    except BrokerStartError as exc:
        out.write(f"demo needs a local MQTT broker: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


def simulated_readings(seconds: float) -> list[tuple[float, Reading]]:
    """The demo's devices read once a second for `seconds` (``rules test --simulate``)."""
    out: list[tuple[float, Reading]] = []
    for step in range(int(seconds) + 1):
        t = float(step)
        for device, _profile, _unit, sensor in DEVICES:
            for point, value in sensor(t).items():
                out.append((t, Reading(device=device, point=point, value=value)))
    return out
