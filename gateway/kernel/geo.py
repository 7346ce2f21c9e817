"""Distances and positions on the Earth (spherical model: metres-level accuracy, plenty
for placing a node, a detection or a defect)."""

from __future__ import annotations

import math

EARTH_RADIUS_M = 6_371_000.0


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in metres between two (lat, lon) points (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def move(pos: tuple[float, float], heading_deg: float, metres: float) -> tuple[float, float]:
    """The point `metres` from `pos` along `heading_deg` (0 = north, clockwise)."""
    if metres == 0:
        return pos
    lat, lon = math.radians(pos[0]), math.radians(pos[1])
    d, h = metres / EARTH_RADIUS_M, math.radians(heading_deg)
    lat2 = math.asin(math.sin(lat) * math.cos(d) + math.cos(lat) * math.sin(d) * math.cos(h))
    lon2 = lon + math.atan2(
        math.sin(h) * math.sin(d) * math.cos(lat), math.cos(d) - math.sin(lat) * math.sin(lat2)
    )
    return math.degrees(lat2), math.degrees(lon2)
