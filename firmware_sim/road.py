"""A simulated inspection drive: a street with cracks and potholes, a vehicle driving it,
the forward camera's view and the GPS position at every frame (deterministic per seed).

Geometry: the street starts at ``origin`` and runs straight along ``heading`` (degrees,
0 = north). Defects sit at ``along`` metres from the start, ``lateral`` metres right of
the lane centre. The camera is a pinhole ``CAMERA_HEIGHT`` metres above the road looking
straight ahead; a ground point ``z`` metres ahead and ``x`` to the right appears at
``u = cx + f x / z``, ``v = horizon + f h / z``. Defects are visible from ``NEAR`` to
``FAR`` metres ahead.

``drive()`` yields, per frame, the time, the vehicle's position and the ground-truth boxes
of the visible defects; ``render()`` draws the frame (asphalt texture, lane marks, dark
pothole blobs, branching cracks); ``write_video()`` writes an MJPG ``.avi`` of a drive;
``python -m firmware_sim road-video OUT.avi --seed 1`` does it from the command line.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from gateway.kernel.geo import move

CAMERA_HEIGHT = 1.6
NEAR, FAR = 3.0, 28.0
WIDTH, HEIGHT = 640, 480
FOCAL = 520.0
HORIZON = 200.0
LANE_HALF_WIDTH = 1.8

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class RoadDefect:
    label: str  # "pothole" or "crack"
    along: float  # metres from the start of the street
    lateral: float  # metres right of the lane centre
    length: float  # metres along the road
    width: float  # metres across
    seed: int  # shape of this defect


@dataclass(frozen=True, slots=True)
class Street:
    origin: tuple[float, float]
    heading: float
    length: float
    defects: tuple[RoadDefect, ...]
    seed: int

    def position(self, along: float) -> tuple[float, float]:
        """(lat, lon) of the point `along` metres down the street."""
        return move(self.origin, self.heading, along)


def street(
    seed: int = 1,
    *,
    length: float = 400.0,
    defects: int = 6,
    origin: tuple[float, float] = (-30.0277, -51.2287),  # Porto Alegre, Rua dos Andradas
    heading: float = 0.0,
    spacing: float = 35.0,
) -> Street:
    """A street with `defects` defects at least `spacing` metres apart."""
    rng = random.Random(seed)
    out: list[RoadDefect] = []
    along = 40.0
    for i in range(defects):
        along += spacing + rng.uniform(0, 25)
        if along > length - 10:
            break
        label = "pothole" if i % 2 == 0 else "crack"
        if label == "pothole":
            size = (rng.uniform(0.5, 1.2), rng.uniform(0.4, 0.9))
        else:
            size = (rng.uniform(1.5, 3.0), rng.uniform(0.6, 1.4))
        lateral = rng.uniform(-1.0, 1.0)
        out.append(RoadDefect(label, along, lateral, size[0], size[1], rng.randrange(1 << 30)))
    return Street(origin, heading, length, tuple(out), seed)


@dataclass(frozen=True, slots=True)
class View:
    """One frame of a drive: when, where, and what the camera sees (ground truth)."""

    index: int
    t: float  # seconds since the start
    along: float
    lat: float
    lon: float
    heading: float
    speed: float  # m/s
    visible: list[tuple[int, tuple[float, float, float, float]]] = field(default_factory=list)


def project(x: float, z: float) -> tuple[float, float]:
    return WIDTH / 2 + FOCAL * x / z, HORIZON + FOCAL * CAMERA_HEIGHT / z


def box_of(defect: RoadDefect, ahead: float) -> tuple[float, float, float, float] | None:
    """The defect's box in the image when it is `ahead` metres ahead, None if not visible."""
    if not NEAR <= ahead <= FAR:
        return None
    z_near, z_far = ahead - defect.length / 2, ahead + defect.length / 2
    if z_near < 1.0:
        return None
    x1, y2 = project(defect.lateral - defect.width / 2, z_near)
    x2, _ = project(defect.lateral + defect.width / 2, z_near)
    _, y1 = project(0, z_far)
    x1, x2 = max(0.0, x1), min(float(WIDTH), x2)
    y2 = min(float(HEIGHT), y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return (x1, y1, x2, y2)


def drive(s: Street, *, speed: float = 8.0, fps: float = 5.0, start: float = 0.0) -> Iterator[View]:
    """The frames of one drive down the street at `speed` m/s, `fps` frames per second."""
    i = 0
    while True:
        along = start + i * speed / fps
        if along > s.length:
            return
        lat, lon = s.position(along)
        visible = []
        for k, d in enumerate(s.defects):
            box = box_of(d, d.along - along)
            if box is not None:
                visible.append((k, box))
        yield View(i, i / fps, along, lat, lon, s.heading, speed, visible)
        i += 1


@dataclass(frozen=True, slots=True)
class StreetRoute:
    """The vehicle of `drive()` as a GPS route (firmware_sim.serial_devices.GpsReceiver):
    it drives the street, then starts over at its beginning, in step with a looped video of
    the same drive."""

    street: Street
    speed: float = 8.0
    fps: float = 5.0

    period: float = field(init=False, repr=False)  # seconds of one drive (its video)

    def __post_init__(self) -> None:
        frames = sum(1 for _ in drive(self.street, speed=self.speed, fps=self.fps))
        object.__setattr__(self, "period", frames / self.fps)  # once, not at every fix

    def at(self, t: float) -> tuple[float, float, float, float]:
        """(lat, lon, heading degrees, speed km/h) at `t` seconds."""
        along = min((t % self.period) * self.speed, self.street.length)
        lat, lon = self.street.position(along)
        return lat, lon, self.street.heading, self.speed * 3.6


def _asphalt(seed: int) -> Image:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 9, (HEIGHT, WIDTH)).astype(np.float32), (0, 0), 1.2)
    grey = np.clip(noise + 105, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def render(s: Street, view: View, *, noise_seed: int | None = None) -> Image:
    """The forward camera's frame for `view` (BGR, 640x480)."""
    img = _asphalt(s.seed * 7919 + (view.index if noise_seed is None else noise_seed))
    img[: int(HORIZON)] = (200, 170, 140)  # sky
    # road edges and the dashed centre line, in perspective
    for x in (-LANE_HALF_WIDTH - 1.8, LANE_HALF_WIDTH + 1.8):
        p1, p2 = project(x, NEAR - 1), project(x, 200)
        cv2.line(img, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), (235, 235, 235), 3)
    dash = 3.0
    first = math.ceil(view.along / (2 * dash)) * 2 * dash
    for k in range(30):
        z0 = first + k * 2 * dash - view.along
        if z0 < 1.5:
            continue
        p1, p2 = project(-LANE_HALF_WIDTH - 0.1, z0), project(-LANE_HALF_WIDTH - 0.1, z0 + dash)
        cv2.line(img, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), (40, 200, 230), 2)
    for k, box in sorted(view.visible, key=lambda kb: -s.defects[kb[0]].along):
        _draw_defect(img, s.defects[k], box)
    return img


def _draw_defect(img: Image, d: RoadDefect, box: tuple[float, float, float, float]) -> None:
    rng = random.Random(d.seed)
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if d.label == "pothole":
        pts = []
        for a in range(0, 360, 20):
            r = rng.uniform(0.8, 1.0)
            pts.append(
                (
                    cx + math.cos(math.radians(a)) * (x2 - x1) / 2 * r,
                    cy + math.sin(math.radians(a)) * (y2 - y1) / 2 * r,
                )
            )
        poly = np.asarray(pts, np.int32)
        cv2.fillPoly(img, [poly], (38, 40, 44))
        cv2.polylines(img, [poly], True, (70, 72, 75), 1)
        return
    thickness = max(1, round((y2 - y1) / 40))
    for _ in range(3):
        pts = []
        x, y = rng.uniform(x1, x2), y1
        while y < y2:
            pts.append((int(x), int(y)))
            x = min(x2, max(x1, x + rng.uniform(-0.12, 0.12) * (x2 - x1)))
            y += (y2 - y1) / 8
        pts.append((int(x), int(y2)))
        cv2.polylines(img, [np.asarray(pts, np.int32)], False, (30, 30, 32), thickness)


def write_video(path: Path, s: Street, *, speed: float = 8.0, fps: float = 5.0) -> int:
    """Write one drive as an MJPG video; returns the number of frames."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write an MJPG video here")
    n = 0
    try:
        for view in drive(s, speed=speed, fps=fps):
            writer.write(render(s, view))
            n += 1
    finally:
        writer.release()
    return n
