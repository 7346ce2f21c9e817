"""Frame capture with OpenCV in its own thread, always holding only the newest frame.

The capture thread reads as fast as the source delivers (so no backlog builds up in
OpenCV's or the network's buffers) and keeps the latest frame; the camera loop takes it at
its own pace — frames in between are dropped and counted. A source that delivers nothing
for `stale_after` seconds is closed and reopened with backoff.

A video file plays at its own frame rate, as a camera would deliver it: frame ``k`` is due
``k / fps`` seconds after the first (an absolute schedule, so decoding time does not make
the video drift behind the wall clock; a looped file continues the schedule). A reader more
than ``MAX_BEHIND`` seconds behind it (a stalled machine) starts the schedule afresh.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

# FFmpeg would print every undecodable frame to stderr; the source counts and reports them
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2
import numpy as np
import numpy.typing as npt

from drivers.api import backoff

logger = logging.getLogger(__name__)

Frame = npt.NDArray[np.uint8]


@dataclass
class SourceStats:
    frames: int = 0  # frames read from the source
    taken: int = 0  # frames handed to the camera loop
    corrupt: int = 0  # frames that decoded to nothing usable
    opens: int = 0
    failures: int = 0  # failed opens and stalls
    behind: int = 0  # times a file's playback fell behind its frame rate and restarted it


STREAMS = ("rtsp:", "rtsps:", "http:", "https:", "tcp:", "udp:")
MAX_BAD_READS = 10  # failed reads in a row before a stream counts as ended
MAX_BEHIND = 1.0  # seconds a file's playback may fall behind its schedule before it restarts


def open_capture(source: str, timeout: float = 5.0) -> cv2.VideoCapture:
    """A VideoCapture for a URL (rtsp, http MJPEG, tcp), a device (/dev/video0, "0") or a
    file; network opens and reads give up after `timeout` seconds."""
    if source.isdigit():
        return cv2.VideoCapture(int(source), cv2.CAP_V4L2)
    if source.startswith("/dev/video"):
        return cv2.VideoCapture(source, cv2.CAP_V4L2)
    ms = max(100, int(timeout * 1000))
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    return cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)


class FrameSource:
    """Owns the capture thread of one camera."""

    def __init__(
        self,
        source: str,
        *,
        stale_after: float = 5.0,
        loop_file: bool = False,
        reconnect_max: float = 30.0,
        realtime: bool = True,
        notify: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.stale_after = stale_after
        self.loop_file = loop_file
        self.reconnect_max = reconnect_max
        # a file played with realtime=False hands over every frame, as fast as it is taken
        self.lockstep = not realtime and not source.startswith((*STREAMS, "/dev/"))
        self.notify = notify  # called from the capture thread on each frame and loss
        self.stats = SourceStats()
        self.online = False
        self.error = ""
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._frame_ts = 0.0
        self._seq = 0
        self._stop = threading.Event()
        self._taken = threading.Event()
        self._taken.set()
        self._thread: threading.Thread | None = None
        # a file played in real time: when (time.monotonic) its frame 0 was due, and how
        # many frames have been delivered on that schedule
        self.playing_since: float | None = None
        self._played = 0

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"camera[{self.source}]", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._taken.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def latest(self, after: int) -> tuple[int, Frame, float] | None:
        """The newest frame if it is newer than sequence number `after`."""
        with self._lock:
            if self._frame is None or self._seq <= after:
                return None
            self.stats.taken += 1
            self._taken.set()
            return self._seq, self._frame, self._frame_ts

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            cap = open_capture(self.source, self.stale_after)
            self.stats.opens += 1
            if not cap.isOpened():
                cap.release()
                self._down(f"cannot open {self.source}")
            else:
                attempt = 0 if self._read_all(cap) else attempt
                cap.release()
            attempt += 1
            self._stop.wait(backoff(attempt, first=1.0, cap=self.reconnect_max))

    def _read_all(self, cap: cv2.VideoCapture) -> bool:
        """Read until the source ends or stalls; True if it delivered anything.

        A frame that does not decode is counted and skipped; a stream ends after
        `MAX_BAD_READS` failed reads in a row or `stale_after` seconds without a usable
        frame. A file ends at its end (or starts over with `loop_file`)."""
        stream = self.source.startswith(STREAMS)
        self.playing_since = None  # a reopened file starts its schedule afresh
        delivered = False
        bad = 0
        last_good = time.monotonic()
        while not self._stop.is_set():
            ok, frame = cap.read()
            now = time.monotonic()
            usable = ok and frame is not None and frame.ndim == 3 and frame.shape[2] == 3
            if not usable:
                if not stream and not ok:
                    if self.loop_file and delivered:
                        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                        continue
                    self._down(f"{self.source}: " + ("end of file" if delivered else "no frames"))
                    return delivered
                bad += 1
                self.stats.corrupt += 1
                if bad >= MAX_BAD_READS or now - last_good > self.stale_after:
                    why = "stream ended" if delivered else "no frames"
                    self._down(f"{self.source}: {why} ({bad} failed reads)")
                    return delivered
                self._stop.wait(0.02)
                continue
            bad = 0
            last_good = now
            delivered = True
            if self.lockstep:  # wait until the previous frame was taken: none is dropped
                self._taken.wait()
                self._taken.clear()
            with self._lock:
                self._frame, self._frame_ts = cast(Frame, frame), time.time()
                self._seq += 1
            self.stats.frames += 1
            if not self.online:
                self.online, self.error = True, ""
            if self.notify is not None:
                self.notify()
            if not stream and not self.lockstep and not self.source.startswith("/dev/"):
                self._pace(cap, now)
        return delivered

    def _pace(self, cap: cv2.VideoCapture, now: float) -> None:
        """Wait until the file's next frame is due (see the module's docstring)."""
        fps = max(1.0, min(cap.get(cv2.CAP_PROP_FPS) or 25.0, 120.0))
        if self.playing_since is not None and now - self._due(fps) > MAX_BEHIND:
            if not self.stats.behind:
                logger.warning(
                    "%s: cannot be read at its %.0f frames/s; played slower", self.source, fps
                )
            self.stats.behind += 1
            self.playing_since = None
        if self.playing_since is None:
            self.playing_since, self._played = now, 0
        self._played += 1
        self._stop.wait(max(0.0, self._due(fps) - time.monotonic()))

    def _due(self, fps: float) -> float:
        assert self.playing_since is not None
        return self.playing_since + self._played / fps

    def _down(self, reason: str) -> None:
        self.stats.failures += 1
        self.online = False
        self.error = reason
        if self.notify is not None:
            self.notify()  # the driver reports it now, before a retry replaces the reason
