"""Frame capture with OpenCV in its own thread, always holding only the newest frame.

The capture thread reads as fast as the source delivers (so no backlog builds up in
OpenCV's or the network's buffers) and keeps the latest frame; the camera loop takes it at
its own pace — frames in between are dropped and counted. A source that delivers nothing
for `stale_after` seconds is closed and reopened with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

Frame = npt.NDArray[np.uint8]


@dataclass
class SourceStats:
    frames: int = 0  # frames read from the source
    taken: int = 0  # frames handed to the camera loop
    corrupt: int = 0  # frames that decoded to nothing usable
    opens: int = 0
    failures: int = 0  # failed opens and stalls


def open_capture(source: str) -> cv2.VideoCapture:
    """A VideoCapture for a URL (rtsp, http MJPEG, tcp), a device (/dev/video0, "0") or a
    file."""
    if source.isdigit():
        return cv2.VideoCapture(int(source), cv2.CAP_V4L2)
    if source.startswith("/dev/video"):
        return cv2.VideoCapture(source, cv2.CAP_V4L2)
    return cv2.VideoCapture(source, cv2.CAP_FFMPEG)


class FrameSource:
    """Owns the capture thread of one camera."""

    def __init__(
        self,
        source: str,
        *,
        stale_after: float = 5.0,
        loop_file: bool = False,
        reconnect_max: float = 30.0,
    ) -> None:
        self.source = source
        self.stale_after = stale_after
        self.loop_file = loop_file
        self.reconnect_max = reconnect_max
        self.stats = SourceStats()
        self.online = False
        self.error = ""
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._frame_ts = 0.0
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"camera[{self.source}]", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def latest(self, after: int) -> tuple[int, Frame, float] | None:
        """The newest frame if it is newer than sequence number `after`."""
        with self._lock:
            if self._frame is None or self._seq <= after:
                return None
            self.stats.taken += 1
            return self._seq, self._frame, self._frame_ts

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            cap = open_capture(self.source)
            self.stats.opens += 1
            if not cap.isOpened():
                cap.release()
                self._down(f"cannot open {self.source}")
            else:
                attempt = 0 if self._read_all(cap) else attempt
                cap.release()
            attempt += 1
            self._stop.wait(min(self.reconnect_max, 0.5 * 2 ** min(attempt - 1, 10)))

    def _read_all(self, cap: cv2.VideoCapture) -> bool:
        """Read until the source stalls or ends; True if it delivered anything."""
        delivered = False
        last_good = time.monotonic()
        while not self._stop.is_set():
            ok, frame = cap.read()
            now = time.monotonic()
            if not ok or frame is None:
                if (
                    self.loop_file
                    and delivered
                    and not self.source.startswith(("rtsp:", "http:", "https:", "tcp:", "udp:"))
                ):
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                self._down(
                    f"{self.source}: stream ended" if delivered else f"{self.source}: no frames"
                )
                return delivered
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.size == 0:
                self.stats.corrupt += 1
                if now - last_good > self.stale_after:
                    self._down(f"{self.source}: only unusable frames for {self.stale_after:g}s")
                    return delivered
                continue
            last_good = now
            delivered = True
            with self._lock:
                self._frame, self._frame_ts = cast(Frame, frame), time.time()
                self._seq += 1
            self.stats.frames += 1
            if not self.online:
                self.online, self.error = True, ""
            if self.loop_file and not self.source.startswith(("rtsp:", "http:", "tcp:")):
                fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
                self._stop.wait(1.0 / max(1.0, min(fps, 120.0)))
        return delivered

    def _down(self, reason: str) -> None:
        self.stats.failures += 1
        self.online = False
        self.error = reason
