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


Record = Reading | Detection | Event


def stamp(record: Record, node: str) -> Record:
    """The record with its node id set (drivers do not know which node they run on)."""
    if record.node == node:
        return record
    return dataclasses.replace(record, node=node)


def iso_time(ts: datetime) -> str:
    """`ts` as UTC ISO 8601 with milliseconds and a ``Z``: the one time format on the wire."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
