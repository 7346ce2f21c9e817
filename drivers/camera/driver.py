"""The camera driver: frames from a source, through the motion gate, into a model.

Sources: RTSP, HTTP/MJPEG and TCP streams, USB/V4L2 devices (``/dev/video0``) and video
files, through OpenCV. Frames are captured in their own thread and processed at `fps`, the
newest first (older ones are dropped, never queued). Detections go to the node as records
with an optional JPEG snapshot of their frame (bounded in size, boxes drawn).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.api import (
    Detection,
    Driver,
    DriverConfig,
    DriverContext,
    Duration,
    FoundObject,
    new_id,
)

if TYPE_CHECKING:  # OpenCV and numpy load when a camera runs, not with the config schema
    import numpy as np
    import numpy.typing as npt

    from drivers.camera.source import FrameSource

    FoundQueue = asyncio.Queue[tuple[npt.NDArray[np.uint8], float, list[FoundObject]]]

logger = logging.getLogger(__name__)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MotionConfig(_Model):
    enabled: bool = Field(default=True, description="Skip inference while nothing moves.")
    threshold: int = Field(default=25, ge=1, le=255, description="Grey-level change per pixel.")
    min_area: float = Field(
        default=0.002, gt=0, le=1, description="Share of the picture that must change."
    )
    masks: list[list[tuple[float, float]]] = Field(
        default_factory=list,
        description="Polygons (0-1 coordinates) to ignore: trees, a clock, a road sign.",
    )


class SnapshotConfig(_Model):
    enabled: bool = Field(default=True, description="Attach a JPEG of the frame.")
    max_bytes: int = Field(default=150_000, ge=5_000, description="Largest JPEG sent.")
    quality: int = Field(default=80, ge=20, le=100, description="JPEG quality.")
    max_width: int = Field(default=1280, ge=160, description="Frames are scaled down to this.")
    draw_boxes: bool = Field(default=True, description="Draw the detections on it.")
    min_interval: Duration = Field(
        default=1.0,
        ge=0,
        description="At most one snapshot per this time; detections in between go without.",
    )


class CameraConfig(DriverConfig):
    """A camera and the model that looks at it."""

    type: Literal["camera"] = Field(description="Driver type.")
    source: str = Field(
        description="rtsp://..., http://... (MJPEG), tcp://..., /dev/video0, or a video file."
    )
    fps: float = Field(default=5.0, gt=0, le=1000, description="Most frames processed per second.")
    model: str | None = Field(default=None, description="Name of a model in `models`.")
    labels: list[str] = Field(
        default_factory=list, description="Report only these labels (all when empty)."
    )
    min_score: float | None = Field(
        default=None, ge=0, le=1, description="Raise the model's score threshold here."
    )
    stale_after: Duration = Field(
        default=5.0, gt=0, description="Reconnect when no frame came for this long."
    )
    reconnect_max: Duration = Field(default=30.0, gt=0, description="Longest reconnect wait.")
    loop: bool = Field(default=False, description="Play a video file in a loop (tests, demos).")
    realtime: bool = Field(
        default=True,
        description="Play a video file at its frame rate; false: every frame, as fast as "
        "the model goes (recorded drives, benchmarks).",
    )
    motion: MotionConfig = Field(default_factory=MotionConfig, description="Motion gate.")
    snapshot: SnapshotConfig = Field(default_factory=SnapshotConfig, description="Snapshots.")


class CameraDriver(Driver):
    """One camera."""

    type = "camera"
    config_model = CameraConfig
    api_version = "2.0"
    requires = ("cv2", "numpy", "onnxruntime")
    install_hint = "pip install 'cityneuron[vision]' (Debian: the cityneuron-vision package)"

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        if not isinstance(config, CameraConfig):
            raise TypeError("CameraDriver needs a CameraConfig")
        self.cfg = config
        self.source: FrameSource | None = None
        from drivers.camera.motion import MotionGate  # noqa: PLC0415 - OpenCV with a camera only

        self.gate = (
            MotionGate(
                threshold=config.motion.threshold,
                min_area=config.motion.min_area,
                masks=config.motion.masks,
            )
            if config.motion.enabled
            else None
        )
        self.processed = 0
        self.inferred = 0
        self.detected = 0
        self.errors = 0

    def camera_stats(self) -> dict[str, int]:
        """Counters for the node's metrics."""
        src = self.source.stats if self.source is not None else None
        return {
            "frames": src.frames if src else 0,
            "processed": self.processed,
            "motion_skipped": self.gate.skipped if self.gate is not None else 0,
            "inferred": self.inferred,
            "detections": self.detected,
            "inference_errors": self.errors,
            "corrupt_frames": src.corrupt if src else 0,
            "reconnects": max(0, src.opens - 1) if src else 0,
        }

    async def run(self, ctx: DriverContext) -> None:
        from drivers.camera.source import FrameSource  # noqa: PLC0415 - OpenCV with a camera only

        cfg = self.cfg
        loop = asyncio.get_running_loop()
        fresh = asyncio.Event()  # set from the capture thread when a frame arrives

        def notify() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(fresh.set)

        source = FrameSource(
            cfg.source,
            stale_after=cfg.stale_after,
            loop_file=cfg.loop,
            reconnect_max=cfg.reconnect_max,
            realtime=cfg.realtime,
            notify=notify,
        )
        self.source = source
        source.start()
        found_queue: FoundQueue = asyncio.Queue(maxsize=2)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(
                    self._publisher(ctx, found_queue), name=f"camera[{self.device_id}].publish"
                )
                await self._loop(ctx, source, fresh, found_queue)
        finally:
            await asyncio.to_thread(source.stop)

    async def _loop(
        self,
        ctx: DriverContext,
        source: FrameSource,
        fresh: asyncio.Event,
        found_queue: FoundQueue,
    ) -> None:
        cfg = self.cfg
        interval = 1.0 / cfg.fps
        model_problem = ""
        seq = 0
        due = ctx.clock.monotonic()
        while True:
            # at most `fps` frames a second; a slow model is never given a backlog
            wait = due - ctx.clock.monotonic()
            if wait > 0:
                await ctx.clock.sleep(wait)
            got = source.latest(seq)
            if got is None:
                if not source.online and source.error:
                    ctx.set_online(False, source.error)
                fresh.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await fresh.wait()
                continue
            due = max(due + interval, ctx.clock.monotonic())
            ctx.set_online(True)
            seq, frame, ts = got
            self.processed += 1
            if self.gate is not None and not self.gate.changed(frame):
                continue
            if cfg.model is None:
                continue
            try:
                found = await ctx.infer(cfg.model, frame)
            except LookupError as exc:
                if str(exc) != model_problem:
                    model_problem = str(exc)
                    ctx.logger.error("camera %s: %s", self.device_id, exc)  # noqa: TRY400
                continue
            except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the camera
                self.errors += 1
                ctx.logger.warning("camera %s: inference failed: %s", self.device_id, exc)
                continue
            model_problem = ""
            self.inferred += 1
            keep = [
                f
                for f in found
                if (not cfg.labels or f.label in cfg.labels)
                and (cfg.min_score is None or f.score >= cfg.min_score)
            ]
            if keep:
                # published by their own task, so that the next frame's inference overlaps
                # with this one's JPEG encoding; the queue is short: no backlog
                await found_queue.put((frame, ts, keep))

    async def _publisher(self, ctx: DriverContext, found_queue: FoundQueue) -> None:
        from drivers.camera.snapshot import encode_snapshot  # noqa: PLC0415 - OpenCV

        cfg = self.cfg
        last_snapshot = -math.inf
        while True:
            frame, ts, keep = await found_queue.get()
            snapshot = None
            now = ctx.clock.monotonic()
            if cfg.snapshot.enabled and now - last_snapshot >= cfg.snapshot.min_interval:
                last_snapshot = now
                snapshot = await asyncio.to_thread(encode_snapshot, frame, keep, cfg.snapshot)
            await self._publish(ctx, ts, keep, snapshot, (frame.shape[1], frame.shape[0]))

    async def _publish(
        self,
        ctx: DriverContext,
        ts: float,
        keep: list[FoundObject],
        snapshot: bytes | None,
        size: tuple[int, int],
    ) -> None:
        cfg = self.cfg
        frame_id = new_id()
        when = datetime.fromtimestamp(ts, UTC)  # when the frame was captured
        for i, f in enumerate(keep):
            det = Detection(
                camera=self.device_id,
                model=cfg.model or "",
                label=f.label,
                score=f.score,
                box=f.box,
                ts=when,
                frame_id=frame_id,
                frame_size=(int(size[0]), int(size[1])),
            )
            await ctx.publish_detection(det, snapshot if i == 0 else None)
            self.detected += 1
