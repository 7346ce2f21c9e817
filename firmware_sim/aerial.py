"""Synthetic aerial tiles: what a drone's nadir camera sees over a city block, with the small
objects city inspection looks for (deterministic per seed).

A tile (2048x2048 by default, about 0.1 m per pixel) has grass and bare ground, a grid of
asphalt roads with lane marks, building roofs, trees and shadows, and three kinds of
objects with their boxes:

* ``vehicle`` — cars and vans on the roads, 10-26 px long (1-2.6 m... at 0.1 m/px: small
  cars seen from high up), body colour, windscreen, shadow;
* ``debris`` — garbage piles and dumped bulky waste on roadsides and ground, 8-30 px,
  irregular, many colours;
* ``water`` — standing water on roads and ground, 14-60 px, smooth dark blue-grey with a
  sky reflection.

Almost all objects are under 32 px: a 2048 px tile shrunk to a 512 px model input makes
them 2-8 px, which is why the aerial model runs with tiling (docs/cameras-and-models.md).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

CLASSES = ("vehicle", "debris", "water")
Image = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Tile:
    image: Image  # BGR
    boxes: npt.NDArray[np.float32]  # [N, 4] x1 y1 x2 y2
    classes: npt.NDArray[np.int64]  # [N] index into CLASSES


def _ground(rng: np.random.Generator, size: int) -> Image:
    low = rng.normal(0, 1, (size // 64 + 2, size // 64 + 2)).astype(np.float32)
    field = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    grass = np.array([70, 120, 85], np.float32)
    soil = np.array([95, 125, 140], np.float32)
    mix = (1 / (1 + np.exp(-2 * field)))[:, :, None]
    img = grass * mix + soil * (1 - mix)
    img += rng.normal(0, 6, (size, size, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


Road = tuple[int, int, bool]  # centre line position, half width, vertical


def _roads(img: Image, rng: random.Random, size: int) -> list[Road]:
    roads: list[Road] = []
    for vertical in (True, False):
        pos = rng.randint(100, 400)
        while pos < size - 60:
            half = rng.randint(28, 45)
            roads.append((pos, half, vertical))
            if vertical:
                cv2.rectangle(img, (pos - half, 0), (pos + half, size), (88, 88, 92), -1)
                for y in range(0, size, 60):
                    cv2.line(img, (pos, y), (pos, y + 30), (220, 220, 220), 2)
            else:
                cv2.rectangle(img, (0, pos - half), (size, pos + half), (88, 88, 92), -1)
                for x in range(0, size, 60):
                    cv2.line(img, (x, pos), (x + 30, pos), (220, 220, 220), 2)
            pos += rng.randint(350, 700)
    return roads


def _on_road(roads: list[Road], x: float, y: float) -> bool:
    return any(abs((x if v else y) - p) < h - 4 for p, h, v in roads)


def _scenery(img: Image, rng: random.Random, size: int, roads: list[Road]) -> None:
    """Buildings (with shadows) and trees, away from the roads."""
    for _ in range(rng.randint(25, 45)):
        w, h = rng.randint(60, 220), rng.randint(60, 220)
        x, y = rng.randint(0, size - w), rng.randint(0, size - h)
        if any(_on_road(roads, px, py) for px in (x, x + w) for py in (y, y + h)):
            continue
        roof = rng.choice([(60, 60, 150), (120, 120, 125), (170, 170, 175), (70, 90, 110)])
        cv2.rectangle(img, (x + 8, y + 8), (x + w + 8, y + h + 8), (40, 50, 45), -1)  # shadow
        cv2.rectangle(img, (x, y), (x + w, y + h), roof, -1)
        cv2.line(img, (x, y + h // 2), (x + w, y + h // 2), tuple(c - 25 for c in roof), 2)
    for _ in range(rng.randint(40, 90)):
        x, y, r = rng.randint(0, size), rng.randint(0, size), rng.randint(10, 35)
        if _on_road(roads, x, y):
            continue
        cv2.circle(img, (x + 5, y + 5), r, (35, 60, 40), -1)
        cv2.circle(img, (x, y), r, (40, rng.randint(95, 130), 55), -1)


def _place(
    rng: random.Random, size: int, roads: list[Road]
) -> tuple[int, tuple[float, float, float, float]]:
    """A random object: its class and box (vehicles on roads, along the road)."""
    kind = rng.choices((0, 1, 2), weights=(5, 3, 2))[0]
    if kind == 0 and roads:
        p, h, vertical = rng.choice(roads)
        length, width = rng.uniform(10, 26), rng.uniform(5, 10)
        along = rng.uniform(20, size - 40)
        across = p + rng.choice((-1, 1)) * rng.uniform(4, h - width)
        cx, cy = (across, along) if vertical else (along, across)
        bw, bh = (width, length) if vertical else (length, width)
    else:
        extent = rng.uniform(8, 30) if kind == 1 else rng.uniform(14, 60)
        bw, bh = extent * rng.uniform(0.6, 1.0), extent * rng.uniform(0.6, 1.0)
        cx, cy = rng.uniform(30, size - 30), rng.uniform(30, size - 30)
    return kind, (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)


def tile(seed: int, size: int = 2048, objects: int = 60) -> Tile:
    """The tile for `seed`: image and ground-truth boxes."""
    rng = random.Random(seed)
    img = _ground(np.random.default_rng(seed), size)
    roads = _roads(img, rng, size)
    _scenery(img, rng, size, roads)
    boxes: list[tuple[float, float, float, float]] = []
    classes: list[int] = []
    for _ in range(objects * 50):
        if len(boxes) >= objects:
            break
        kind, b = _place(rng, size, roads)
        inside = b[0] >= 2 and b[1] >= 2 and b[2] <= size - 2 and b[3] <= size - 2
        apart = all(
            b[2] + 4 < o[0] or o[2] + 4 < b[0] or b[3] + 4 < o[1] or o[3] + 4 < b[1] for o in boxes
        )
        if inside and apart:
            _draw(img, kind, b, rng)
            boxes.append(b)
            classes.append(kind)
    img = np.asarray(cv2.GaussianBlur(img, (3, 3), 0.6), np.uint8)
    return Tile(img, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64))


def _draw(img: Image, kind: int, b: tuple[float, float, float, float], rng: random.Random) -> None:
    x1, y1, x2, y2 = (round(v) for v in b)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    if kind == 0:
        colour = rng.choice(
            [(230, 230, 230), (30, 30, 30), (40, 40, 180), (160, 90, 30), (150, 150, 150)]
        )
        cv2.rectangle(img, (x1 + 2, y1 + 2), (x2 + 2, y2 + 2), (50, 50, 55), -1)  # shadow
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, -1)
        if x2 - x1 > y2 - y1:  # windscreen across the body
            wx = x1 + (x2 - x1) // 3
            cv2.line(img, (wx, y1 + 1), (wx, y2 - 1), (60, 50, 40), 2)
        else:
            wy = y1 + (y2 - y1) // 3
            cv2.line(img, (x1 + 1, wy), (x2 - 1, wy), (60, 50, 40), 2)
        return
    pts = []
    n = rng.randint(7, 12)
    for i in range(n):
        a = 2 * math.pi * i / n
        r = rng.uniform(0.65, 1.0) if kind == 1 else rng.uniform(0.85, 1.0)
        pts.append((cx + math.cos(a) * (x2 - x1) / 2 * r, cy + math.sin(a) * (y2 - y1) / 2 * r))
    poly = np.asarray(pts, np.int32)
    if kind == 1:
        cv2.fillPoly(img, [poly], (rng.randint(40, 90), rng.randint(60, 110), rng.randint(80, 140)))
        for _ in range(max(3, (x2 - x1) * (y2 - y1) // 25)):  # bags, boxes, bits
            px, py = rng.randint(x1, max(x1, x2 - 3)), rng.randint(y1, max(y1, y2 - 3))
            s = rng.randint(2, 5)
            colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
            cv2.rectangle(img, (px, py), (px + s, py + s), colour, -1)
        return
    cv2.fillPoly(img, [poly], (92, 78, 62))
    inner = ((poly - [cx, cy]) * 0.6 + [cx - 2, cy - 2]).astype(np.int32)
    cv2.fillPoly(img, [inner], (125, 110, 95))  # the sky's reflection
