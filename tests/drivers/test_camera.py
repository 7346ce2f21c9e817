"""The camera driver against real video: files written by OpenCV and a simulated MJPEG IP
camera (firmware_sim.camera) that is killed and restarted, models in onnxruntime."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from drivers.camera.driver import CameraConfig, CameraDriver, SnapshotConfig
from drivers.camera.motion import MotionGate
from drivers.camera.snapshot import encode_snapshot
from drivers.camera.source import FrameSource
from firmware_sim.broker import free_port
from firmware_sim.camera import CameraServer, street
from gateway.config import ConfigError, load_config
from gateway.kernel.records import Detection
from gateway.snapshots import SnapshotStore
from models.registry import ModelRegistry
from tests.drivers.harness import Harness, run_drivers
from tests.models.onnx_builders import constant_model, detect_spec, package

CLASSES = ["car", "pothole"]


def camera(source: str, **kw: Any) -> CameraDriver:
    cfg: dict[str, Any] = {
        "id": kw.pop("id", "cam1"),
        "type": "camera",
        "source": source,
        "fps": 20,
        "stale_after": 1.0,
        "reconnect_max": 0.5,
        **kw,
    }
    return CameraDriver(CameraConfig.model_validate(cfg))


@pytest.fixture
def pothole_model(tmp_path: Path) -> Path:
    """A model that sees one pothole in the middle of every 64x64 input."""
    out = np.zeros((1, 4 + len(CLASSES), 1), np.float32)
    out[0, :4, 0] = (32, 32, 16, 16)
    out[0, 5, 0] = 0.9
    return package(tmp_path / "pothole", constant_model(out), detect_spec("yolov8", CLASSES))


@asynccontextmanager
async def with_models(**packages: Path) -> AsyncIterator[ModelRegistry]:
    registry = ModelRegistry(packages, threads=1)
    loaded = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(registry.run(loaded.set), name="models")
        await asyncio.wait_for(loaded.wait(), 30)
        try:
            yield registry
        finally:
            task.cancel()


def write_video(path: Path, frames: int, *, moving: bool = True, fps: float = 30.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (320, 240))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(street(i, 320, 240, moving=moving))
    writer.release()
    return path


def detections(h: Harness, camera_id: str = "cam1") -> list[Detection]:
    return [r for r in h.records if isinstance(r, Detection) and r.camera == camera_id]


def offline_reasons(h: Harness, device: str = "cam1") -> list[str]:
    return h.event_messages(device, "device.offline")


async def test_video_file_frames_become_detections_with_a_snapshot(
    tmp_path: Path, pothole_model: Path
) -> None:
    video = write_video(tmp_path / "street.avi", 40)
    driver = camera(str(video), model="pothole", motion={"enabled": False})
    snapshots = SnapshotStore()
    async with (
        with_models(pothole=pothole_model) as models,
        run_drivers(driver, models=models, snapshots=snapshots) as h,
    ):
        await h.wait(lambda: len(detections(h)) >= 5)
        det = detections(h)[0]
        assert (det.label, det.model) == ("pothole", "pothole")
        assert det.score == pytest.approx(0.9)
        # 320x240 letterboxed into 64x64 (scale 0.2, 8 rows of padding): centre of the frame
        assert det.box == pytest.approx((120.0, 80.0, 200.0, 160.0))
        assert det.frame_id is not None
        jpeg = snapshots.take(det.frame_id)
        assert jpeg is not None
        picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert picture.shape == (240, 320, 3)
        # the box is drawn in red on the grey road
        b, g, r = picture[80, 160]
        assert r > 150 and g < 100 and b < 100
    assert driver.camera_stats()["reconnects"] == 0


async def test_end_of_file_is_reported_and_the_file_reopened(tmp_path: Path) -> None:
    video = write_video(tmp_path / "short.avi", 5)
    driver = camera(str(video))
    async with run_drivers(driver) as h:
        await h.wait(lambda: driver.camera_stats()["reconnects"] >= 2)
        assert h.events("cam1")[0] == "device.online"
        assert any("end of file" in m for m in offline_reasons(h))


async def test_a_looped_file_plays_without_reconnecting(tmp_path: Path) -> None:
    video = write_video(tmp_path / "short.avi", 5, fps=60)
    driver = camera(str(video), loop=True)
    async with run_drivers(driver) as h:
        await h.wait(lambda: driver.camera_stats()["frames"] >= 20)
        assert offline_reasons(h) == []
        assert driver.camera_stats()["reconnects"] == 0


async def test_a_camera_killed_mid_stream_is_reconnected_when_it_returns(
    pothole_model: Path,
) -> None:
    with CameraServer(fps=20) as server:
        driver = camera(server.url, model="pothole", motion={"enabled": False})
        async with (
            with_models(pothole=pothole_model) as models,
            run_drivers(driver, models=models) as h,
        ):
            await h.wait(lambda: len(detections(h)) >= 3)
            server.kill()
            await h.wait(lambda: len(offline_reasons(h)) == 1)
            assert "stream ended" in offline_reasons(h)[0] or "no frames" in offline_reasons(h)[0]
            before = len(detections(h))
            await asyncio.sleep(1.0)  # while it is away: retries, nothing detected
            assert len(detections(h)) == before
            assert driver.camera_stats()["reconnects"] >= 1
            server.start()
            await h.wait(lambda: h.events("cam1")[-1] == "device.online", timeout=15)
            await h.wait(lambda: len(detections(h)) >= before + 3)


async def test_corrupt_frames_are_skipped_without_dropping_the_stream() -> None:
    with CameraServer(fps=30, corrupt_every=4) as server:
        driver = camera(server.url, fps=30)
        async with run_drivers(driver) as h:
            await h.wait(lambda: driver.camera_stats()["corrupt_frames"] >= 5, timeout=15)
            stats = driver.camera_stats()
            assert stats["frames"] >= 10
            assert stats["reconnects"] == 0
            assert offline_reasons(h) == []


async def test_an_unreachable_camera_is_offline_and_others_keep_running(tmp_path: Path) -> None:
    dead = camera(f"http://127.0.0.1:{free_port()}/video", id="dead")
    alive = camera(str(write_video(tmp_path / "v.avi", 20)), id="alive", loop=True)
    async with run_drivers(dead, alive) as h:
        await h.wait(lambda: offline_reasons(h, "dead") != [])
        assert "cannot open" in offline_reasons(h, "dead")[0]
        await h.wait(lambda: dead.camera_stats()["reconnects"] >= 2)
        await h.wait(lambda: alive.camera_stats()["processed"] >= 10)
        assert h.events("alive") == ["device.online"]


@pytest.mark.parametrize(("moving", "inferences"), [(False, "one"), (True, "most")])
async def test_the_motion_gate_skips_inference_on_a_still_scene(
    pothole_model: Path, moving: bool, inferences: str
) -> None:
    with CameraServer(fps=20, moving=moving) as server:
        driver = camera(server.url, model="pothole", fps=10)
        async with with_models(pothole=pothole_model) as models, run_drivers(driver, models=models):
            while driver.processed < 15:
                await asyncio.sleep(0.05)
        if inferences == "one":
            assert driver.inferred == 1  # the first frame, then nothing changed
            assert driver.camera_stats()["motion_skipped"] >= 14
        else:
            assert driver.inferred >= driver.processed - 1


def test_motion_in_a_masked_area_is_ignored() -> None:
    gate = MotionGate(masks=[[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]])
    still = street(0, 320, 240, moving=False)
    assert gate.changed(still)  # the first frame always passes
    left = still.copy()
    cv2.rectangle(left, (20, 20), (120, 200), (255, 255, 255), -1)  # inside the mask
    assert not gate.changed(left)
    right = still.copy()
    cv2.rectangle(right, (200, 20), (300, 200), (255, 255, 255), -1)
    assert gate.changed(right)


async def test_a_missing_model_is_reported_once_and_the_camera_keeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    driver = camera(str(write_video(tmp_path / "v.avi", 20)), loop=True, model="nope")
    with caplog.at_level(logging.ERROR):
        async with run_drivers(driver, models=ModelRegistry({})) as h:
            await h.wait(lambda: driver.processed >= 10)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["camera cam1: model 'nope': no such model in the config"]
    assert h.events("cam1") == ["device.online"]


def test_snapshots_are_bounded_in_bytes() -> None:
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 255, (1080, 1920, 3), np.uint8)  # the worst case for JPEG
    cfg = SnapshotConfig(max_bytes=20_000, max_width=1280)
    jpeg = encode_snapshot(noise, [], cfg)
    assert jpeg is not None
    assert len(jpeg) <= 20_000
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[1] <= 1280
    assert picture.shape[0] * 1920 == pytest.approx(picture.shape[1] * 1080, rel=0.01)


def test_camera_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="fps"):
        CameraConfig.model_validate({"id": "c", "type": "camera", "source": "x", "fps": 0})
    with pytest.raises(ValueError, match="source"):
        CameraConfig.model_validate({"id": "c", "type": "camera"})


def test_a_camera_naming_an_unknown_model_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(
        "node: {id: n1}\n"
        "models:\n  packages: {road: models/road}\n"
        "devices:\n  - {type: camera, id: cam1, source: /dev/video0, model: raod}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, [CameraConfig])
    (issue,) = caught.value.issues
    assert str(issue).startswith(f"{path}:1:1: ")
    assert "device 'cam1' uses model 'raod', which is not in the models section" in str(issue)
    assert "(configured: road)" in str(issue)


def write_noise_video(path: Path, frames: int, size: tuple[int, int], fps: float) -> Path:
    """A video whose frames are slow to decode (noise does not compress)."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), np.uint8))
    writer.release()
    return path


def test_a_file_plays_at_its_frame_rate_without_drifting(tmp_path: Path) -> None:
    # frame k is due k/fps after the first: decoding time does not add up over the video
    video = write_noise_video(tmp_path / "noise.avi", 20, (640, 480), fps=25)
    source = FrameSource(str(video), loop_file=True)
    source.start()
    try:
        time.sleep(4.0)
        frames, now = source.stats.frames, time.monotonic()
        since = source.playing_since
    finally:
        source.stop()
    assert since is not None
    assert source.stats.behind == 0
    assert abs(frames - ((now - since) * 25 + 1)) <= 2


def test_a_file_too_heavy_for_its_frame_rate_is_played_slower_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    video = write_noise_video(tmp_path / "heavy.avi", 10, (1920, 1080), fps=120)
    source = FrameSource(str(video), loop_file=True)
    with caplog.at_level(logging.WARNING, logger="drivers.camera.source"):
        source.start()
        try:
            deadline = time.monotonic() + 30
            while source.stats.behind < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            source.stop()
    assert source.stats.behind >= 2
    said = [r.getMessage() for r in caplog.records if "played slower" in r.getMessage()]
    assert said == [f"{video}: cannot be read at its 120 frames/s; played slower"]
