"""Sensor models of a simulated city, as functions of time (deterministic per seed).

Each model returns the values of its profile's read-only points at time ``t`` seconds
after start. Scripted happenings (a manhole lid lifted, a rain storm) let demos and tests
see alarms fire and clear.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any


def _noise(seed: int, t: float, scale: float) -> float:
    """Smooth deterministic noise: a few incommensurate sines with seeded phases."""
    rng = random.Random(seed)
    phases = [rng.uniform(0, math.tau) for _ in range(3)]
    return scale * (
        0.5 * math.sin(t / 7.3 + phases[0])
        + 0.3 * math.sin(t / 2.9 + phases[1])
        + 0.2 * math.sin(t / 17.1 + phases[2])
    )


@dataclass
class ManholeCover:
    """A manhole cover that is lifted during ``[open_from, open_until)``."""

    seed: int = 1
    open_from: float | None = 20.0
    open_until: float | None = 35.0
    base_water_cm: float = 35.0

    def __call__(self, t: float) -> dict[str, Any]:
        lifted = (
            self.open_from is not None
            and self.open_until is not None
            and self.open_from <= t < self.open_until
        )
        tilt = 14.0 + _noise(self.seed, t, 2.0) if lifted else abs(_noise(self.seed, t, 0.3))
        return {
            "lid_open": lifted,
            "tilt": round(tilt, 1),
            "water_level": round(self.base_water_cm + _noise(self.seed + 1, t, 3.0)),
            "battery": round(3.6 - t / 864000.0, 2),
            "temperature": round(12.0 + _noise(self.seed + 2, t, 1.5), 1),
            "tamper": lifted,
        }


@dataclass
class RiverGauge:
    """A river level that rises during a storm between ``storm_from`` and ``storm_until``."""

    seed: int = 2
    base_m: float = 1.20
    storm_from: float = 30.0
    storm_until: float = 90.0
    rise_m_per_s: float = 0.01
    rain_mm: float = field(default=0.0, init=False)

    def __call__(self, t: float) -> dict[str, Any]:
        storm = max(0.0, min(t, self.storm_until) - self.storm_from)
        after = max(0.0, t - self.storm_until)
        level = self.base_m + self.rise_m_per_s * storm - 0.004 * after
        level = max(self.base_m, level) + _noise(self.seed, t, 0.01)
        return {
            "level": round(level, 3),
            "water_temperature": round(9.5 + _noise(self.seed + 1, t, 0.4), 1),
            "rain_total": round(0.4 * storm, 1),
            "sensor_ok": True,
        }


@dataclass
class DustNoise:
    """A construction site: dust and noise high while machines work (``busy`` windows)."""

    seed: int = 3
    busy: tuple[tuple[float, float], ...] = ((10.0, 70.0),)

    def __call__(self, t: float) -> dict[str, Any]:
        working = any(a <= t < b for a, b in self.busy)
        pm10 = (140.0 if working else 25.0) + _noise(self.seed, t, 15.0)
        return {
            "pm25": max(0, round(pm10 * 0.45)),
            "pm10": max(0, round(pm10)),
            "noise": round((78.0 if working else 52.0) + _noise(self.seed + 1, t, 4.0), 1),
            "temperature": round(17.0 + _noise(self.seed + 2, t, 1.0), 2),
            "humidity": round(60.0 + _noise(self.seed + 3, t, 5.0), 1),
        }


@dataclass
class Hydrant:
    """A fire hydrant; pressure drops while it is opened (``open_windows``)."""

    seed: int = 4
    open_windows: tuple[tuple[float, float], ...] = ((45.0, 60.0),)
    flow_lps: float = 15.0

    def __call__(self, t: float) -> dict[str, Any]:
        opened = sum(max(0.0, min(t, b) - a) for a, b in self.open_windows)
        flowing = any(a <= t < b for a, b in self.open_windows)
        pressure = (2.1 if flowing else 4.6) + _noise(self.seed, t, 0.05)
        return {
            "pressure": round(pressure, 3),
            "flow_total": int(opened * self.flow_lps),
            "tamper": False,
        }
