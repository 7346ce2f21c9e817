"""Camera + ONNX inference through the node, against a raw onnxruntime loop.

Run:  .venv/bin/python bench/inference.py [--model DIR] [--frames 300] [--seconds 15]

In the same run, with the same model package and the same session options:

* throughput: the frames of a video file (640x480, MJPG) through a whole node — camera
  driver reading the file (every frame, `realtime: false`), model registry, decoding,
  NMS, detections with JPEG snapshots into the SQLite outbox — against a hand-written
  loop: OpenCV reads the same file, letterbox, `session.run` (the baseline); printed as
  frames/s and the ratio (target >= 0.9);
* latency: a simulated IP camera (MJPEG over HTTP, 15 frames/s, moving scene), the node
  processing 5 frames/s; from the frame's capture to its detection arriving on the bus
  (p50/p95);
* CPU: the same camera showing a still scene, 5 frames/s, with the motion gate on and
  off: CPU time of the node's process over wall time (1.0 = one core busy).

The model defaults to the shipped road model when present, else the YOLOv8 fixture.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2
import numpy as np
import onnxruntime as ort
import yaml

from drivers.camera.driver import CameraConfig, CameraDriver
from firmware_sim.camera import CameraServer, street
from gateway.app import Gateway
from gateway.config import (
    DiscoverySection,
    HttpSection,
    ModelsSection,
    NodeConfig,
    NodeSection,
    OutboxSection,
)
from gateway.kernel.records import Detection
from gateway.plugins import DriverRegistry
from models.package import load_spec

THREADS = 2
CANDIDATES = [ROOT / "models" / "zoo" / "road_defect", ROOT / "tests/fixtures/models/yolov8-tiny"]


def write_video(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (640, 480))
    for i in range(frames):
        writer.write(street(i, 640, 480))
    writer.release()
    return path


def baseline(model_dir: Path, video: Path, warmup: int) -> tuple[int, float]:
    """Frames/s of the hand-written loop: read, letterbox, run."""
    spec = load_spec(model_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_dir / spec.file), options)
    name = session.get_inputs()[0].name
    w, h = spec.input.size
    cap = cv2.VideoCapture(str(video))
    n, started = 0, 0.0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        r = min(w / frame.shape[1], h / frame.shape[0])
        nw, nh = round(frame.shape[1] * r), round(frame.shape[0] * r)
        img = cv2.resize(frame, (nw, nh))
        top, left = (h - nh) // 2, (w - nw) // 2
        img = cv2.copyMakeBorder(
            img, top, h - nh - top, left, w - nw - left, cv2.BORDER_CONSTANT, value=(114,) * 3
        )
        x = img[:, :, ::-1].transpose(2, 0, 1)[np.newaxis].astype(np.float32) / 255.0
        session.run(None, {name: x})
        n += 1
        if n == warmup:
            started = time.perf_counter()
    cap.release()
    return n - warmup, time.perf_counter() - started


def node_config(data: Path, model_dir: Path, camera: dict[str, Any]) -> NodeConfig:
    return NodeConfig(
        node=NodeSection(id="bench", data_dir=data),
        outbox=OutboxSection(fsync="normal"),
        http=HttpSection(enabled=False),
        discovery=DiscoverySection(enabled=False),
        models=ModelsSection(packages={"m": model_dir}, threads=THREADS),
        devices=[
            CameraConfig.model_validate({"id": "cam", "type": "camera", "model": "m", **camera})
        ],
    )


@asynccontextmanager
async def node(cfg: NodeConfig) -> AsyncIterator[Gateway]:
    registry = DriverRegistry()
    registry.add(CameraDriver, "cityneuron", "camera")
    gw = Gateway(cfg, registry=registry)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gw.run(handle_signals=False), name="gateway")
        await asyncio.wait_for(gw.ready.wait(), 60)
        try:
            yield gw
        finally:
            gw.request_stop()


def camera_of(gw: Gateway) -> CameraDriver:
    driver = gw.drivers["cam"].driver
    assert isinstance(driver, CameraDriver)
    return driver


async def through_node(
    tmp: Path, model_dir: Path, video: Path, frames: int, warmup: int
) -> tuple[int, float]:
    cfg = node_config(
        tmp / "data-throughput",
        model_dir,
        {"source": str(video), "realtime": False, "fps": 1000, "motion": {"enabled": False}},
    )
    async with node(cfg) as gw:
        cam = camera_of(gw)
        while cam.inferred < warmup:
            await asyncio.sleep(0.001)
        started, first = time.perf_counter(), cam.inferred
        while cam.inferred < frames:
            await asyncio.sleep(0.001)
        return cam.inferred - first, time.perf_counter() - started


def eager(model_dir: Path, tmp: Path) -> Path:
    """A copy of the package that reports everything down to a score of 0.05: the latency
    is timed on detections, and a precise model finds little in the simulated street."""
    copy = shutil.copytree(model_dir, tmp / "eager-model")
    spec = yaml.safe_load((copy / "model.yaml").read_text())
    spec["thresholds"] = spec.get("thresholds", {}) | {"score": 0.05, "per_class": {}}
    (copy / "model.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return copy


async def latency(tmp: Path, model_dir: Path, seconds: float) -> list[float]:
    out: list[float] = []
    model_dir = eager(model_dir, tmp)
    with CameraServer(fps=15, size=(640, 480)) as server:
        cfg = node_config(
            tmp / "data-latency",
            model_dir,
            {"source": server.url, "fps": 5, "motion": {"enabled": False}},
        )
        async with node(cfg) as gw:
            with gw.bus.subscribe("bench", maxsize=100_000) as sub:
                seen: set[str | None] = set()
                end = time.monotonic() + seconds
                warm = time.monotonic() + 2.0
                while time.monotonic() < end:
                    try:
                        record = await asyncio.wait_for(sub.get(), 1.0)
                    except TimeoutError:
                        continue
                    if isinstance(record, Detection) and record.frame_id not in seen:
                        seen.add(record.frame_id)  # one figure per frame: its first detection
                        if time.monotonic() > warm:
                            out.append((datetime.now(UTC) - record.ts).total_seconds())
    return out


async def cpu(tmp: Path, model_dir: Path, seconds: float, gate: bool) -> tuple[float, int, int]:
    with CameraServer(fps=15, size=(640, 480), moving=False) as server:
        cfg = node_config(
            tmp / f"data-cpu-{gate}",
            model_dir,
            {"source": server.url, "fps": 5, "motion": {"enabled": gate}},
        )
        async with node(cfg) as gw:
            cam = camera_of(gw)
            while cam.processed < 5:
                await asyncio.sleep(0.05)
            wall, proc = time.perf_counter(), time.process_time()
            processed, inferred = cam.processed, cam.inferred
            await asyncio.sleep(seconds)
            used = (time.process_time() - proc) / (time.perf_counter() - wall)
            return used, cam.processed - processed, cam.inferred - inferred


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=next((c for c in CANDIDATES if c.exists()), None)
    )
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    model_dir: Path = args.model
    spec = load_spec(model_dir)
    print(
        f"model {spec.name} {spec.version} ({model_dir}), "
        f"input {spec.input.size}, {THREADS} threads"
    )
    warmup = 10
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        video = write_video(tmp / "street.avi", args.frames)
        n_base, t_base = baseline(model_dir, video, warmup)
        n_node, t_node = await through_node(tmp, model_dir, video, args.frames, warmup)
        fps_base, fps_node = n_base / t_base, n_node / t_node
        print(f"throughput, {args.frames} frames of 640x480 (first {warmup} not counted):")
        print(f"  raw onnxruntime loop : {fps_base:8.1f} frames/s")
        print(f"  through the node     : {fps_node:8.1f} frames/s")
        print(f"  ratio node / raw     : {fps_node / fps_base:8.2f}   (target >= 0.9)")

        lat = await latency(tmp, model_dir, args.seconds)
        print(
            f"frame -> detection on the bus, live MJPEG camera at 5 frames/s ({len(lat)} frames):"
        )
        if lat:
            print(f"  p50 {1000 * pct(lat, 50):.1f} ms, p95 {1000 * pct(lat, 95):.1f} ms")
        else:
            print("  no detections at a score of 0.05: no latency to report")

        on = await cpu(tmp, model_dir, args.seconds, gate=True)
        off = await cpu(tmp, model_dir, args.seconds, gate=False)
        print(f"CPU on a still scene, 5 frames/s, {args.seconds:g} s each (1.0 = one core):")
        print(f"  motion gate off: {off[0]:.3f} cores ({off[1]} frames, {off[2]} inferences)")
        print(f"  motion gate on : {on[0]:.3f} cores ({on[1]} frames, {on[2]} inferences)")
        print(f"  ratio on / off : {on[0] / off[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
