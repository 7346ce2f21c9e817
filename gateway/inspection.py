"""Road inspection: detections geotagged and merged into one report per defect.

A camera on a sweeper sees a pothole in ten or twenty consecutive frames as the vehicle
approaches it, and again on every later drive down the street. Road maintenance wants one
report per pothole, updated when it is seen again. This component does that:

1. **Tracks** (one pass): a detection joins the open track of the same camera whose last
   box is nearest in the image (centre distance under ``match_distance`` of the frame
   diagonal), provided it was seen within ``gap`` seconds, preferring a track of its own
   label; otherwise it opens a track. Detectors trade classes on one object from frame to
   frame (a crack region called a pothole in a few frames): that is one defect, reported
   with the label that won the most score (a track of another label is joined only when
   the boxes share most of their columns). A track takes at most one detection per frame,
   so a pothole inside a crack region, both seen in the same frames, stays two defects.
   Each sighting is geotagged with where the vehicle was when its frame was captured
   (the location service's last fix dead-reckoned to that moment: `LocationService.at`);
   sightings without a valid fix are counted and left out: they cannot be placed.
2. When a track has not been seen for ``gap`` seconds it closes. Tracks with fewer than
   ``min_sightings`` sightings are dropped as noise. The defect's position is the vehicle's
   position at the sighting where the box was largest (the closest approach), moved
   ``ahead`` metres along the heading; its size is that box's share of the frame, which
   gives the severity (``severity.major``/``severity.critical`` thresholds).
3. **Defects** (across drives) are kept in SQLite in the data directory. A closed track
   within ``radius`` metres of a known defect with the same label updates that defect
   (event action ``update``, its pass count and last-seen time move on); otherwise it is a
   new defect (action ``new``). Either way one ``defect`` event goes upstream, carrying the
   best picture of the pass as its snapshot.

State survives restarts; the open tracks of a pass interrupted by a restart are lost
(a few frames), never the defects already reported.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.bus import Bus, DropPolicy
from gateway.kernel.component import Ready
from gateway.kernel.geo import distance_m, move
from gateway.kernel.records import Detection, Event, Severity, iso_time, new_id
from gateway.snapshots import SnapshotStore

logger = logging.getLogger(__name__)

PICTURES_KEPT = 64  # recent frame JPEGs remembered for the best-picture choice
MAX_OPEN_TRACKS = 256
RELABEL_OVERLAP = 0.5  # share of columns with which another label joins a track


@dataclass(frozen=True, slots=True)
class InspectionSettings:
    cameras: frozenset[str] = frozenset()  # all when empty
    labels: frozenset[str] = frozenset()  # all when empty
    radius: float = 10.0
    gap: float = 3.0
    min_sightings: int = 2
    match_distance: float = 0.25
    ahead: float = 0.0
    major: float = 0.01
    critical: float = 0.05


@dataclass
class Sighting:
    ts: datetime
    score: float
    box: tuple[float, float, float, float]
    area: float  # share of the frame (0..1), or box pixels when the frame size is unknown
    location: dict[str, Any]


@dataclass
class Track:
    camera: str
    label: str  # the label with the most score so far
    model: str
    last_seen: float  # monotonic
    last: Sighting
    sightings: int = 0
    closest: Sighting | None = None
    best_score: float = 0.0
    picture: bytes | None = None
    picture_score: float = -1.0
    frame_size: tuple[int, int] | None = None
    votes: dict[str, float] = field(default_factory=dict)
    last_frame: str | None = None

    def add(
        self, s: Sighting, now: float, picture: bytes | None, label: str, frame: str | None
    ) -> None:
        self.sightings += 1
        self.last, self.last_seen, self.last_frame = s, now, frame
        self.votes[label] = self.votes.get(label, 0.0) + s.score
        self.label = max(self.votes, key=lambda k: self.votes[k])
        self.best_score = max(self.best_score, s.score)
        if self.closest is None or s.area > self.closest.area:
            self.closest = s
        if picture is not None and s.score > self.picture_score:
            self.picture, self.picture_score = picture, s.score


@dataclass
class Defect:
    id: str
    label: str
    lat: float
    lon: float
    first_seen: str
    last_seen: str
    sightings: int
    passes: int
    best_score: float
    area: float
    severity: str
    extra: dict[str, Any] = field(default_factory=dict)


class DefectStore:
    """Known defects in SQLite (small; every call is quick, run in a thread anyway)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path)
        db.execute(
            "CREATE TABLE IF NOT EXISTS defects (id TEXT PRIMARY KEY, label TEXT NOT NULL, "
            "lat REAL NOT NULL, lon REAL NOT NULL, first_seen TEXT NOT NULL, "
            "last_seen TEXT NOT NULL, sightings INTEGER NOT NULL, passes INTEGER NOT NULL, "
            "best_score REAL NOT NULL, area REAL NOT NULL, severity TEXT NOT NULL)"
        )
        return db

    def load(self) -> list[Defect]:
        db = self._connect()
        try:
            rows = db.execute(
                "SELECT id, label, lat, lon, first_seen, last_seen, sightings, passes, "
                "best_score, area, severity FROM defects"
            ).fetchall()
        finally:
            db.close()
        return [Defect(*row) for row in rows]

    def save(self, d: Defect) -> None:
        db = self._connect()
        try:
            with db:
                db.execute(
                    "INSERT OR REPLACE INTO defects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        d.id,
                        d.label,
                        d.lat,
                        d.lon,
                        d.first_seen,
                        d.last_seen,
                        d.sightings,
                        d.passes,
                        d.best_score,
                        d.area,
                        d.severity,
                    ),
                )
        finally:
            db.close()


def _centre_distance(a: Sighting, b: Detection, diagonal: float) -> float:
    ax, ay = (a.box[0] + a.box[2]) / 2, (a.box[1] + a.box[3]) / 2
    bx, by = (b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2
    return math.hypot(ax - bx, ay - by) / diagonal


def _across(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """How much two boxes share their horizontal extent (intersection over union of the
    x intervals). Between frames a defect on the road slides down the picture by more than
    its own height, so its boxes rarely overlap, but it stays in the same columns."""
    inter = min(a[2], b[2]) - max(a[0], b[0])
    union = max(a[2], b[2]) - min(a[0], b[0])
    return max(0.0, inter) / union if union > 0 else 0.0


class InspectionService:
    """Component turning camera detections into deduplicated, geotagged defect events."""

    name = "inspection"

    def __init__(
        self,
        bus: Bus,
        store: DefectStore,
        *,
        locate: Callable[[datetime], dict[str, Any] | None],
        settings: InspectionSettings | None = None,
        snapshots: SnapshotStore | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.bus = bus
        self.store = store
        self.locate = locate
        self.settings = settings or InspectionSettings()
        self.clock = clock or time.monotonic
        self.tracks: list[Track] = []
        self.defects: list[Defect] = []
        self._pictures: OrderedDict[str, bytes] = OrderedDict()
        self.snapshots = snapshots
        if snapshots is not None:
            snapshots.listeners.append(self._picture)
        self.counts = {"sightings": 0, "unlocated": 0, "noise": 0, "new": 0, "updated": 0}
        self._unlocated_streak = False

    def _picture(self, frame_id: str, jpeg: bytes) -> None:
        self._pictures[frame_id] = jpeg
        while len(self._pictures) > PICTURES_KEPT:
            self._pictures.popitem(last=False)

    def wants(self, d: Detection) -> bool:
        s = self.settings
        return (not s.cameras or d.camera in s.cameras) and (not s.labels or d.label in s.labels)

    def observe(self, d: Detection) -> None:
        """Add one detection to its track (or open one)."""
        if not self.wants(d):
            return
        now = self.clock()
        loc = self.locate(d.ts)
        if not loc or not loc.get("valid") or "lat" not in loc or "lon" not in loc:
            self.counts["unlocated"] += 1
            if not self._unlocated_streak:
                reason = (loc or {}).get("reason", "no location configured")
                logger.warning("inspection: detections cannot be placed (%s)", reason)
                self._unlocated_streak = True
            return
        if self._unlocated_streak:
            logger.info("inspection: detections are placed again")
            self._unlocated_streak = False
        self.counts["sightings"] += 1
        w, h = d.frame_size or (0, 0)
        box_w, box_h = d.box[2] - d.box[0], d.box[3] - d.box[1]
        area = box_w * box_h / (w * h) if w and h else box_w * box_h
        diagonal = math.hypot(w, h) if w and h else math.hypot(d.box[2], d.box[3]) or 1.0
        sighting = Sighting(d.ts, d.score, d.box, area, dict(loc))
        picture = self._pictures.get(d.frame_id) if d.frame_id else None
        best: Track | None = None
        best_key = (True, self.settings.match_distance)  # (other label?, distance)
        for t in self.tracks:
            if t.camera != d.camera or now - t.last_seen > self.settings.gap:
                continue
            if d.frame_id and t.last_frame == d.frame_id:
                continue  # one detection per frame and track
            key = (t.label != d.label, _centre_distance(t.last, d, diagonal))
            if key[0] and _across(t.last.box, d.box) < RELABEL_OVERLAP:
                continue  # another label only for the same object: the same columns
            if key[1] <= self.settings.match_distance and key <= best_key:
                best, best_key = t, key
        if best is None:
            if len(self.tracks) >= MAX_OPEN_TRACKS:
                self.tracks.sort(key=lambda t: t.last_seen)
                self.tracks.pop(0)
                self.counts["noise"] += 1
            best = Track(d.camera, d.label, d.model, now, sighting, frame_size=d.frame_size)
            self.tracks.append(best)
        best.add(sighting, now, picture, d.label, d.frame_id)

    def due(self) -> float | None:
        """Seconds until the oldest open track closes, None without open tracks."""
        if not self.tracks:
            return None
        oldest = min(t.last_seen for t in self.tracks)
        return max(0.0, oldest + self.settings.gap - self.clock())

    def close_due(self) -> list[tuple[Track, Defect, str]]:
        """Close the tracks not seen for `gap`; returns (track, defect, action) per report."""
        now = self.clock()
        closed = [t for t in self.tracks if now - t.last_seen > self.settings.gap]
        if not closed:
            return []
        self.tracks = [t for t in self.tracks if t not in closed]
        out = []
        for t in closed:
            if t.sightings < self.settings.min_sightings or t.closest is None:
                self.counts["noise"] += 1
                continue
            out.append(self._merge(t))
        return out

    def _severity(self, area: float, frame_known: bool) -> Severity:
        if not frame_known:
            return Severity.MINOR
        if area >= self.settings.critical:
            return Severity.CRITICAL
        if area >= self.settings.major:
            return Severity.MAJOR
        return Severity.MINOR

    def _merge(self, t: Track) -> tuple[Track, Defect, str]:
        assert t.closest is not None
        loc = t.closest.location
        pos = (float(loc["lat"]), float(loc["lon"]))
        heading = loc.get("heading")
        if self.settings.ahead and isinstance(heading, int | float):
            pos = move(pos, float(heading), self.settings.ahead)
        severity = self._severity(t.closest.area, t.frame_size is not None).value
        nearest: Defect | None = None
        nearest_m = self.settings.radius
        for d in self.defects:
            if d.label == t.label:
                m = distance_m(pos, (d.lat, d.lon))
                if m <= nearest_m:
                    nearest, nearest_m = d, m
        seen = iso_time(t.last.ts)
        if nearest is None:
            defect = Defect(
                new_id(),
                t.label,
                pos[0],
                pos[1],
                iso_time(t.closest.ts),
                seen,
                t.sightings,
                1,
                t.best_score,
                t.closest.area,
                severity,
            )
            self.defects.append(defect)
            self.counts["new"] += 1
            return t, defect, "new"
        d = nearest
        # the position is refined with every pass (mean of the passes' estimates)
        d.lat += (pos[0] - d.lat) / (d.passes + 1)
        d.lon += (pos[1] - d.lon) / (d.passes + 1)
        d.passes += 1
        d.sightings += t.sightings
        d.last_seen = seen
        d.best_score = max(d.best_score, t.best_score)
        d.extra = {"moved_m": round(nearest_m, 2)}
        d.area, d.severity = t.closest.area, severity  # the current state of the road
        self.counts["updated"] += 1
        return t, d, "update"

    def event(self, t: Track, d: Defect, action: str) -> Event:
        assert t.closest is not None
        snapshot = None
        event_id = new_id()
        if t.picture is not None and self.snapshots is not None:
            self.snapshots.put(event_id, t.picture)
            snapshot = event_id
        box = t.closest.box
        location = {**t.closest.location, "lat": round(d.lat, 7), "lon": round(d.lon, 7)}
        data: dict[str, Any] = {
            "defect_id": d.id,
            "action": action,
            "label": d.label,
            "model": t.model,
            "score": round(t.best_score, 4),
            "sightings": t.sightings,
            "passes": d.passes,
            "first_seen": d.first_seen,
            "last_seen": d.last_seen,
            "size": {
                "box_px": [round(box[2] - box[0], 1), round(box[3] - box[1], 1)],
                "frame_share": round(t.closest.area, 5) if t.frame_size else None,
            },
            **d.extra,
        }
        verb = "found" if action == "new" else "seen again"
        return Event(
            id=event_id,
            kind="defect",
            source=t.camera,
            severity=Severity(d.severity),
            message=f"{d.label} {verb} at {d.lat:.6f},{d.lon:.6f} ({t.sightings} frames)",
            data=data,
            location=location,
            snapshot=snapshot,
            ts=t.last.ts,
        )

    async def _report(self) -> None:
        for t, d, action in self.close_due():
            await asyncio.to_thread(self.store.save, d)
            event = self.event(t, d, action)
            logger.info("inspection: %s", event.message)
            await self.bus.publish(event)

    async def run(self, ready: Ready) -> None:
        self.defects = await asyncio.to_thread(self.store.load)
        with self.bus.subscribe(
            "inspection", maxsize=1000, policy=DropPolicy.DROP_OLDEST, kinds=(Detection,)
        ) as sub:
            ready()
            try:
                while True:
                    wait = self.due()
                    try:
                        async with asyncio.timeout(None if wait is None else wait + 0.05):
                            record = await sub.get()
                    except TimeoutError:
                        await self._report()
                        continue
                    if isinstance(record, Detection):
                        self.observe(record)
                    await self._report()
            finally:
                if self.snapshots is not None and self._picture in self.snapshots.listeners:
                    self.snapshots.listeners.remove(self._picture)

    def status(self) -> dict[str, Any]:
        return {
            "defects": len(self.defects),
            "open_tracks": len(self.tracks),
            **self.counts,
        }
