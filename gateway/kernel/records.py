"""Immutable records that flow from drivers and models to rules and the uplink."""

from __future__ import annotations

import dataclasses
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

Value = bool | int | float | str | None


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # every 10-bit value as 2 chars
_SHIFTS = tuple(range(120, -1, -10))
# ids need uniqueness, not secrecy: a PRNG seeded from the OS is ample and ~3x faster
_rng = random.Random(os.urandom(32))


def new_id() -> str:
    """A unique, time-ordered identifier: a ULID (26 Crockford base-32 characters, the
    creation time in ms then 80 random bits), so ids sort by creation time as text."""
    n = (time.time_ns() // 1_000_000) << 80 | _rng.getrandbits(80)
    pairs = _PAIRS
    return "".join([pairs[(n >> shift) & 1023] for shift in _SHIFTS])


def id_block() -> str:
    """The first 24 characters of a ULID whose last 10 random bits are left free: the ids
    ``block + id_suffix(i)`` for i < 1024 are unique, time-ordered ULIDs made at the cost
    of one (the readings of one poll share a time and a block)."""
    n = (time.time_ns() // 1_000_000) << 80 | _rng.getrandbits(70) << 10
    pairs = _PAIRS
    return "".join([pairs[(n >> shift) & 1023] for shift in _SHIFTS[:-1]])


def id_suffix(index: int) -> str:
    """The last two characters of the id number `index` (< 1024) of an `id_block`."""
    return _PAIRS[index]


BLOCK_IDS = 1024  # ids one block can give


def id_time(ident: str) -> datetime:
    """The creation time encoded in an id made by `new_id`."""
    ms = 0
    for ch in ident[:10]:
        ms = ms * 32 + _CROCKFORD.index(ch)
    return datetime.fromtimestamp(ms / 1000, UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Quality(StrEnum):
    """How far a value can be trusted (OPC UA style, reduced to what a node can know)."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Severity(StrEnum):
    """Severity of an event, lowest first."""

    INFO = "info"
    WARNING = "warning"
    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """One value of one point of one device at one moment."""

    device: str
    point: str
    value: Value
    ts: datetime = field(default_factory=utcnow)
    quality: Quality = Quality.GOOD
    unit: str | None = None
    node: str = ""
    id: str = field(default_factory=new_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node": self.node,
            "device": self.device,
            "point": self.point,
            "value": self.value,
            "unit": self.unit,
            "quality": self.quality.value,
            "ts": iso_time(self.ts),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Detection:
    """One object found by a model in one frame."""

    camera: str
    model: str
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in source-image pixels
    ts: datetime = field(default_factory=utcnow)
    frame_id: str | None = None
    frame_size: tuple[int, int] | None = None  # width, height of the source image
    node: str = ""
    id: str = field(default_factory=new_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node": self.node,
            "camera": self.camera,
            "model": self.model,
            "label": self.label,
            "score": round(self.score, 4),
            "box": [round(v, 1) for v in self.box],
            "frame_id": self.frame_id,
            "frame_size": list(self.frame_size) if self.frame_size else None,
            "ts": iso_time(self.ts),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something the node reports on its own: an alarm, a state change, a detection."""

    kind: str
    source: str
    severity: Severity = Severity.INFO
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    rule: str | None = None
    location: dict[str, Any] | None = None
    snapshot: str | None = None
    ts: datetime = field(default_factory=utcnow)
    node: str = ""
    id: str = field(default_factory=new_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node": self.node,
            "kind": self.kind,
            "source": self.source,
            "severity": self.severity.value,
            "message": self.message,
            "rule": self.rule,
            "data": self.data,
            "location": self.location,
            "snapshot": self.snapshot,
            "ts": iso_time(self.ts),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadingBatch:
    """The readings one poll of one device produced: measured at one moment, as columns.

    A poll of 50 registers is one record on the bus and one row of its message in the
    outbox, not 50 objects; `readings()` gives them one by one where a consumer needs
    them (the rules of that device). Reading number i has the id ``ids + id_suffix(i)``.
    """

    device: str
    points: tuple[str, ...]
    values: tuple[Value, ...]
    units: tuple[str | None, ...]
    qualities: tuple[Quality, ...]
    ts: datetime = field(default_factory=utcnow)
    node: str = ""
    ids: str = field(default_factory=id_block)  # at most BLOCK_IDS readings

    def __post_init__(self) -> None:
        n = len(self.points)
        if not 0 < n <= BLOCK_IDS or not (
            len(self.values) == len(self.units) == len(self.qualities) == n
        ):
            raise ValueError(
                f"a reading batch needs 1 to {BLOCK_IDS} points with a value, unit and "
                f"quality each (got {n} points, {len(self.values)} values)"
            )

    def __len__(self) -> int:
        return len(self.points)

    @property
    def id(self) -> str:
        """The id of its first reading (what a bus drop names)."""
        return self.ids + _PAIRS[0]

    def readings(self) -> list[Reading]:
        ids, ts, node, device = self.ids, self.ts, self.node, self.device
        return [
            Reading(
                device=device, point=p, value=v, unit=u, quality=q, ts=ts, node=node,
                id=ids + _PAIRS[i],
            )
            for i, (p, v, u, q) in enumerate(
                zip(self.points, self.values, self.units, self.qualities, strict=True)
            )
        ]  # fmt: skip

    def to_dicts(self) -> list[dict[str, Any]]:
        """Its readings as the telemetry message carries them (without node and device)."""
        ids, ts = self.ids, iso_time(self.ts)
        pairs = _PAIRS
        return [
            {"id": ids + pairs[i], "point": p, "value": v, "unit": u, "quality": q.value, "ts": ts}
            for i, (p, v, u, q) in enumerate(
                zip(self.points, self.values, self.units, self.qualities, strict=True)
            )
        ]


Record = Reading | ReadingBatch | Detection | Event


def stamp(record: Record, node: str) -> Record:
    """The record with its node id set (drivers do not know which node they run on)."""
    if record.node == node:
        return record
    return dataclasses.replace(record, node=node)


def iso_time(ts: datetime) -> str:
    """`ts` as UTC ISO 8601 with milliseconds and a ``Z``: the one time format on the wire."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
