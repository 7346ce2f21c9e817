"""A simulated IP camera: an HTTP MJPEG stream (``multipart/x-mixed-replace``), as most
IP cameras and ``ffmpeg -f mpjpeg`` serve it.

The pictures are a synthetic street (a grey road, lane marks and a moving dark blob that
models see as an object), a still scene (`moving=False`, for the motion gate) or JPEG
files from a folder, looped. `corrupt_every` replaces every N-th part with bytes that are
not a JPEG, as a camera with a flaky link sends. Run it as its own process
(`CameraServer`) so tests can kill and restart it.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from firmware_sim.broker import free_port, wait_for_port
from firmware_sim.process import HelperProcess

BOUNDARY = "cityneuronframe"


def street(
    index: int, width: int = 320, height: int = 240, *, moving: bool = True
) -> npt.NDArray[np.uint8]:
    """Frame `index` of the synthetic street scene (BGR)."""
    frame = np.full((height, width, 3), (90, 95, 100), np.uint8)
    cv2.rectangle(frame, (0, height // 3), (width, height), (60, 60, 60), -1)
    for x in range(0, width, 40):
        cv2.line(frame, (x, height * 2 // 3), (x + 20, height * 2 // 3), (230, 230, 230), 3)
    x = (index * 8) % width if moving else width // 2
    cv2.ellipse(frame, (x, height * 3 // 4), (18, 10), 0, 0, 360, (20, 20, 25), -1)
    return frame


def jpeg_frames(folder: Path | None, width: int, height: int, *, moving: bool) -> Iterator[bytes]:
    """Endless JPEG frames: the files in `folder` looped, or the synthetic street."""
    if folder is not None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        if not files:
            raise SystemExit(f"{folder}: no .jpg files")
        while True:
            for path in files:
                yield path.read_bytes()
    index = 0
    while True:
        ok, data = cv2.imencode(".jpg", street(index, width, height, moving=moving))
        if not ok:  # pragma: no cover - OpenCV always encodes a plain BGR image
            raise RuntimeError("JPEG encoding failed")
        yield data.tobytes()
        index += 1


class _Stream:
    """The frame clock shared by all viewers: every viewer sees the same frame sequence."""

    def __init__(self, frames: Iterator[bytes], fps: float, corrupt_every: int) -> None:
        self.fps = fps
        self.corrupt_every = corrupt_every
        self._frames = frames
        self._cond = threading.Condition()
        self._current = b""
        self._number = 0

    def run(self) -> None:
        while True:
            data = next(self._frames)
            with self._cond:
                self._number += 1
                bad = self.corrupt_every and self._number % self.corrupt_every == 0
                self._current = b"\xff\xd8 this is not a picture \xff\xd9" if bad else data
                self._cond.notify_all()
            time.sleep(1.0 / self.fps)

    def next_after(self, number: int) -> tuple[int, bytes]:
        with self._cond:
            self._cond.wait_for(lambda: self._number > number, timeout=5.0)
            return self._number, self._current


def serve(
    host: str,
    port: int,
    *,
    fps: float,
    folder: Path | None,
    width: int,
    height: int,
    moving: bool,
    corrupt_every: int,
) -> None:
    stream = _Stream(jpeg_frames(folder, width, height, moving=moving), fps, corrupt_every)
    threading.Thread(target=stream.run, name="frames", daemon=True).start()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in ("/", "/video", "/stream.mjpg"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            number = 0
            try:
                while True:
                    number, data = stream.next_after(number)
                    self.wfile.write(
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(data)}\r\n\r\n".encode()
                        + data
                        + b"\r\n"
                    )
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    sys.stdout.write(f"camera on http://{host}:{server.server_address[1]}/video\n")
    sys.stdout.flush()
    server.serve_forever()


class CameraServer(HelperProcess):
    """The simulated camera as a subprocess on a fixed port (kill and restart keep it)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        fps: float = 15.0,
        folder: Path | None = None,
        size: tuple[int, int] = (320, 240),
        moving: bool = True,
        corrupt_every: int = 0,
    ) -> None:
        super().__init__(None, "camera-sim-")
        self.host = host
        self.port = port or free_port(host)
        self.argv = [
            sys.executable,
            "-m",
            "firmware_sim",
            "camera",
            "--host",
            host,
            "--port",
            str(self.port),
            "--fps",
            str(fps),
            "--size",
            f"{size[0]}x{size[1]}",
            "--corrupt-every",
            str(corrupt_every),
        ]
        if folder is not None:
            self.argv += ["--folder", str(folder)]
        if not moving:
            self.argv.append("--still")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/video"

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._spawn(self.argv)
        if not wait_for_port(self.host, self.port, timeout):
            self.stop()
            raise RuntimeError(f"camera simulator did not listen on {self.port}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the synthetic scene")
    p.add_argument("--folder", type=Path, help="serve the .jpg files of this folder, looped")
    p.add_argument("--still", action="store_true", help="nothing moves (motion gate tests)")
    p.add_argument("--corrupt-every", type=int, default=0, help="every N-th frame is garbage")


def main(args: argparse.Namespace) -> None:
    width, _, height = str(args.size).partition("x")
    serve(
        args.host,
        args.port,
        fps=args.fps,
        folder=args.folder,
        width=int(width),
        height=int(height),
        moving=not args.still,
        corrupt_every=args.corrupt_every,
    )
