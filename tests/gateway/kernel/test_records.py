from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from gateway.kernel.records import Detection, Event, Reading, Severity, id_time, new_id, stamp

ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def test_ids_are_ulids_unique_and_time_ordered() -> None:
    ids = [new_id() for _ in range(100_000)]
    assert all(ULID.match(i) for i in ids)
    assert len(set(ids)) == len(ids)
    first = new_id()
    time.sleep(0.003)
    assert new_id() > first  # a later millisecond sorts after
    assert abs(id_time(first) - datetime.now(UTC)) < timedelta(seconds=2)


def test_records_serialise_with_utc_milliseconds() -> None:
    ts = datetime(2026, 11, 22, 1, 2, 3, 456789, tzinfo=UTC)
    r = Reading(device="d", point="p", value=1.5, unit="m", ts=ts)
    assert r.to_dict()["ts"] == "2026-11-22T01:02:03.456Z"
    assert r.to_dict()["quality"] == "good"
    e = Event(kind="alarm.x", source="s", severity=Severity.MAJOR, ts=ts)
    assert e.to_dict()["severity"] == "major"
    d = Detection(
        camera="c", model="m", label="pothole", score=0.87654, box=(1.04, 2.0, 3.0, 4.0), ts=ts
    )
    assert d.to_dict()["score"] == 0.8765
    assert d.to_dict()["box"] == [1.0, 2.0, 3.0, 4.0]


def test_stamp_sets_the_node_and_keeps_the_id() -> None:
    r = Reading(device="d", point="p", value=1)
    s = stamp(r, "n1")
    assert s.node == "n1"
    assert s.id == r.id
    assert stamp(s, "n1") is s
