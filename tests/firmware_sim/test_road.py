"""The simulated inspection drive: deterministic, geometrically consistent, a real video."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from firmware_sim.road import HEIGHT, WIDTH, box_of, drive, render, street
from gateway.kernel.geo import distance_m


def test_the_same_seed_gives_the_same_street_and_frames() -> None:
    a, b, c = street(seed=4), street(seed=4), street(seed=5)
    assert a == b and a != c
    view = next(v for v in drive(a) if v.visible)
    assert np.array_equal(render(a, view), render(b, view))
    # defects keep their distance: the inspection's radius can tell them apart
    alongs = [d.along for d in a.defects]
    assert all(later - earlier >= 35 for earlier, later in itertools.pairwise(alongs))


def test_a_defect_grows_and_slides_down_as_the_vehicle_approaches() -> None:
    s = street(seed=1)
    d = s.defects[0]
    boxes = [box_of(d, ahead) for ahead in (18.0, 12.0, 8.0, 4.0)]
    assert all(b is not None for b in boxes)
    heights = [b[3] - b[1] for b in boxes if b is not None]
    bottoms = [b[3] for b in boxes if b is not None]
    assert heights == sorted(heights) and bottoms == sorted(bottoms)
    assert box_of(d, 40.0) is None and box_of(d, 1.0) is None  # beyond the view
    # the street's geometry: positions along it are that many metres apart
    assert abs(distance_m(s.position(0), s.position(100)) - 100) < 0.01


def test_the_road_video_is_written_and_decodes(tmp_path: Path) -> None:
    out = tmp_path / "drive.avi"
    subprocess.run(
        [sys.executable, "-m", "firmware_sim", "road-video", str(out), "--seed", "2",
         "--length", "120"],
        check=True,
        timeout=120,
    )  # fmt: skip
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    expected = sum(1 for _ in drive(street(2, length=120)))
    assert len(frames) == expected
    assert frames[0].shape == (HEIGHT, WIDTH, 3)
    # the pothole is dark against the asphalt where the simulation says it is
    s = street(2, length=120)
    view = next(v for v in drive(s) if any(s.defects[k].label == "pothole" for k, _ in v.visible))
    _k, (x1, y1, x2, y2) = next((k, b) for k, b in view.visible if s.defects[k].label == "pothole")
    inside = frames[view.index][int(y1) : int(y2), int(x1) : int(x2)].mean()
    road = frames[view.index][int(y2) + 5 : int(y2) + 25, int(x1) : int(x2)].mean()
    assert inside < road - 20
