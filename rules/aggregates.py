"""Window aggregates and detection counts for rule conditions, bounded in memory."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.kernel.geo import distance_m
from rules.bundle import Aggregate, DetectionCount

MAX_SAMPLES = 10_000  # per window: a 10-minute window at 16 Hz still fits
MAX_DETECTIONS = 10_000


class SlidingWindow:
    """The samples of the last `over` seconds, with O(1) amortised aggregates."""

    def __init__(self, spec: Aggregate) -> None:
        self.spec = spec
        self.samples: deque[tuple[float, float]] = deque()
        self.total = 0.0
        self._mins: deque[tuple[float, float]] = deque()  # increasing values
        self._maxs: deque[tuple[float, float]] = deque()  # decreasing values

    def add(self, t: float, value: float) -> None:
        self.samples.append((t, value))
        self.total += value
        while self._mins and self._mins[-1][1] >= value:
            self._mins.pop()
        self._mins.append((t, value))
        while self._maxs and self._maxs[-1][1] <= value:
            self._maxs.pop()
        self._maxs.append((t, value))
        if len(self.samples) > MAX_SAMPLES:
            self._drop()

    def _drop(self) -> None:
        t, value = self.samples.popleft()
        self.total -= value
        if self._mins and self._mins[0][0] <= t:
            self._mins.popleft()
        if self._maxs and self._maxs[0][0] <= t:
            self._maxs.popleft()

    def _expire(self, now: float) -> None:
        horizon = now - self.spec.over
        while self.samples and self.samples[0][0] < horizon:
            self._drop()

    def value(self, now: float) -> float | None:
        self._expire(now)
        samples = self.samples
        if self.spec.fn == "count":
            return float(len(samples))
        if not samples:
            return None
        (t0, v0), (t1, v1) = samples[0], samples[-1]
        compute: dict[str, Callable[[], float | None]] = {
            "avg": lambda: self.total / len(samples),
            "sum": lambda: self.total,
            "min": lambda: self._mins[0][1],
            "max": lambda: self._maxs[0][1],
            "delta": lambda: v1 - v0,
            # change per second across the window; undefined with a single sample
            "rate": lambda: (v1 - v0) / (t1 - t0) if t1 > t0 else None,
        }
        return compute[self.spec.fn]()


@dataclass
class _Bucket:
    start: float
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    first: tuple[float, float] | None = None
    last: tuple[float, float] | None = None


class TumblingWindow:
    """Consecutive fixed windows; the value is that of the last complete one."""

    def __init__(self, spec: Aggregate) -> None:
        self.spec = spec
        self.current: _Bucket | None = None
        self.completed: _Bucket | None = None

    def _bucket_start(self, t: float) -> float:
        return math.floor(t / self.spec.over) * self.spec.over

    def _roll(self, now: float) -> None:
        start = self._bucket_start(now)
        if self.current is not None and self.current.start < start:
            # an empty window in between means the last complete one had no samples
            gap = start - self.current.start > self.spec.over
            self.completed = _Bucket(start - self.spec.over) if gap else self.current
            self.current = None

    def add(self, t: float, value: float) -> None:
        self._roll(t)
        if self.current is None:
            self.current = _Bucket(self._bucket_start(t))
        b = self.current
        b.count += 1
        b.total += value
        b.low = min(b.low, value)
        b.high = max(b.high, value)
        b.first = b.first or (t, value)
        b.last = (t, value)

    def value(self, now: float) -> float | None:
        self._roll(now)
        b = self.completed
        if b is None:
            return None
        if self.spec.fn == "count":
            return float(b.count)
        if b.count == 0 or b.first is None or b.last is None:
            return None
        (t0, v0), (t1, v1) = b.first, b.last
        compute: dict[str, Callable[[], float | None]] = {
            "avg": lambda: b.total / b.count,
            "sum": lambda: b.total,
            "min": lambda: b.low,
            "max": lambda: b.high,
            "delta": lambda: v1 - v0,
            "rate": lambda: (v1 - v0) / (t1 - t0) if t1 > t0 else None,
        }
        return compute[self.spec.fn]()


Window = SlidingWindow | TumblingWindow


def make_window(spec: Aggregate) -> Window:
    return SlidingWindow(spec) if spec.window == "sliding" else TumblingWindow(spec)


@dataclass(frozen=True, slots=True)
class Seen:
    t: float
    label: str
    score: float
    lat: float | None
    lon: float | None


class DetectionLog:
    """Recent detections (bounded), for counts by label, time and distance."""

    def __init__(self, max_entries: int = MAX_DETECTIONS, horizon: float = 86400.0) -> None:
        self.entries: deque[Seen] = deque(maxlen=max_entries)
        self.horizon = horizon

    def add(self, seen: Seen) -> None:
        self.entries.append(seen)

    def count(
        self, spec: DetectionCount, now: float, here: tuple[float, float] | None
    ) -> float | None:
        """Matching detections; None when a radius is asked for but the node has no fix."""
        if spec.radius_m is not None and here is None:
            return None
        while self.entries and self.entries[0].t < now - self.horizon:
            self.entries.popleft()
        horizon = now - spec.within
        labels = set(spec.labels)
        n = 0
        for seen in reversed(self.entries):
            if seen.t < horizon:
                break
            if labels and seen.label not in labels:
                continue
            if seen.score < spec.min_score:
                continue
            if spec.radius_m is not None:
                if seen.lat is None or seen.lon is None or here is None:
                    continue
                if distance_m(here, (seen.lat, seen.lon)) > spec.radius_m:
                    continue
            n += 1
        return float(n)
