from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.bus import Bus
from gateway.kernel.component import Ready
from gateway.kernel.records import Event, Quality, Reading, ReadingBatch, Severity
from gateway.outbox import Outbox, OutboxStore, Priority, pack
from tests.mqtt import telemetry_readings

T0 = datetime(2026, 11, 22, 0, 59, 2, 431000, tzinfo=UTC)


def readings(device: str, n: int, start: int = 0) -> list[Reading]:
    return [Reading(device=device, point="p", value=start + i, ts=T0) for i in range(n)]


def store(path: Path, **kw: object) -> OutboxStore:
    return OutboxStore(path / "outbox.db", max_bytes=kw.pop("max_bytes", 10**8), **kw)  # type: ignore[arg-type]


def test_pack_groups_readings_per_device_and_keeps_order() -> None:
    records = [*readings("a", 3), *readings("b", 2), *readings("a", 2, start=3)]
    msgs = pack(records, "n1", batch_max=4, now=0)
    assert [(m.topic, m.count) for m in msgs] == [
        ("telemetry/a", 4),
        ("telemetry/a", 1),
        ("telemetry/b", 2),
    ]
    first = json.loads(msgs[0].body)
    assert first["node"] == "n1"
    assert first["device"] == "a"
    assert [r["value"] for r in telemetry_readings(first)] == [0, 1, 2, 3]
    assert len({r["id"] for r in telemetry_readings(first)}) == 4


def test_events_are_sent_before_telemetry_and_sequence_numbers_are_never_reused(
    tmp_path: Path,
) -> None:
    s = store(tmp_path)
    alarm = Event(kind="alarm.manhole_open", source="mh1", severity=Severity.CRITICAL)
    info = Event(kind="device.online", source="mh1")
    s.commit(pack([*readings("a", 2), info, alarm], "n1", 10, 0), ())
    msgs = s.peek(10, set())
    assert [m.priority for m in msgs] == [Priority.ALARM, Priority.EVENT, Priority.TELEMETRY]
    assert [m.topic for m in msgs] == [
        "events/alarm.manhole_open",
        "events/device.online",
        "telemetry/a",
    ]
    payload = json.loads(msgs[0].payload())
    assert payload["seq"] == msgs[0].seq
    assert payload["id"] == alarm.id
    # acknowledged messages are deleted; new ones get higher sequence numbers
    s.commit([], [m.seq for m in msgs])
    assert s.peek(10, set()) == []
    s.commit(pack(readings("a", 1), "n1", 10, 0), ())
    (later,) = s.peek(10, set())
    assert later.seq > max(m.seq for m in msgs)
    s.close()
    # and after reopening the file
    s = store(tmp_path)
    s.commit(pack(readings("a", 1), "n1", 10, 0), ())
    assert max(m.seq for m in s.peek(10, set())) > later.seq
    s.close()


def test_full_outbox_evicts_oldest_telemetry_first_and_counts_it(tmp_path: Path) -> None:
    s = store(tmp_path, max_bytes=20_000)
    alarm = Event(kind="alarm.flood", source="river", severity=Severity.CRITICAL)
    s.commit(pack([alarm], "n1", 10, 0), ())
    evicted_total = 0
    for round_ in range(100):
        evicted = s.commit(pack(readings("a", 5, start=round_ * 5), "n1", 5, 0), ())
        evicted_total += evicted.get("telemetry", 0)
    assert s.stats.bytes <= 20_000
    assert evicted_total > 0
    assert s.stats.evicted["telemetry"] == evicted_total
    msgs = s.peek(1000, set())
    # the alarm survived; what remains of the telemetry is the newest, in order
    assert msgs[0].topic == "events/alarm.flood"
    values = [r["value"] for m in msgs[1:] for r in telemetry_readings(json.loads(m.body))]
    assert values == list(range(500 - len(values), 500))
    assert evicted_total + len(values) == 500
    s.close()


def test_ttl_expires_old_messages_per_class(tmp_path: Path) -> None:
    s = store(
        tmp_path, ttl={Priority.ALARM: 1000.0, Priority.EVENT: 100.0, Priority.TELEMETRY: 10.0}
    )
    alarm = Event(kind="alarm.x", source="s", severity=Severity.MAJOR)
    s.commit(pack([alarm, Event(kind="info", source="s"), *readings("a", 3)], "n1", 10, 0), ())
    assert s.expire(now=50) == {"telemetry": 3}
    assert s.expire(now=500) == {"event": 1}
    assert [m.priority for m in s.peek(10, set())] == [Priority.ALARM]
    s.close()


def test_rejects_a_file_from_newer_software(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "outbox.db")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(RuntimeError, match="schema 99 is newer"):
        store(tmp_path)


async def test_writer_commits_bus_records_and_deletes_after_ack(tmp_path: Path) -> None:
    bus = Bus()
    outbox = Outbox(tmp_path / "o.db", node="n1", bus=bus, commit_interval=0.01)
    ready = asyncio.Event()
    r: Ready = ready.set
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(outbox.run(r), name="outbox")
        await asyncio.wait_for(ready.wait(), 5)
        for reading in readings("a", 5):
            await bus.publish(reading)
        msgs = await asyncio.wait_for(outbox.next_messages(10), 5)
        got = [r["value"] for m in msgs for r in telemetry_readings(json.loads(m.payload()))]
        while len(got) < 5:
            more = await asyncio.wait_for(outbox.next_messages(10), 5)
            msgs += more
            got += [r["value"] for m in more for r in telemetry_readings(json.loads(m.payload()))]
        assert got == [0, 1, 2, 3, 4]
        assert outbox.stats.accepted == 5
        for m in msgs:
            outbox.ack(m)
        # an idle outbox still commits the deletions promptly
        for _ in range(100):
            if outbox.stats.messages == 0:
                break
            await asyncio.sleep(0.01)
        assert outbox.stats.messages == 0
        assert outbox.stats.sent == len(msgs)
        task.cancel()


async def test_records_queued_at_shutdown_are_committed(tmp_path: Path) -> None:
    bus = Bus()
    outbox = Outbox(tmp_path / "o.db", node="n1", bus=bus, commit_interval=5.0)
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(outbox.run(ready.set), name="outbox")
        await asyncio.wait_for(ready.wait(), 5)
        for reading in readings("a", 50):
            await bus.publish(reading)
        await asyncio.sleep(0)
        task.cancel()
    s = OutboxStore(tmp_path / "o.db", max_bytes=10**8)
    values = [
        r["value"] for m in s.peek(100, set()) for r in telemetry_readings(json.loads(m.body))
    ]
    s.close()
    assert values == list(range(50))


@contextlib.asynccontextmanager
async def running_outbox(tmp_path: Path, **kw: Any) -> AsyncIterator[tuple[Bus, Outbox]]:
    """An outbox writer running on its own bus until the block ends (then cancelled)."""
    bus = Bus()
    outbox = Outbox(tmp_path / "o.db", node="n1", bus=bus, **kw)
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(outbox.run(ready.set), name="outbox")
        await asyncio.wait_for(ready.wait(), 5)
        yield bus, outbox
        task.cancel()


async def test_released_messages_are_offered_again_in_order(tmp_path: Path) -> None:
    async with running_outbox(tmp_path, commit_interval=0.01, batch_max=1) as (bus, outbox):
        for reading in readings("a", 3):
            await bus.publish(reading)
        await asyncio.wait_for(outbox.committed.wait(), 5)
        first = await outbox.next_messages(2)
        assert outbox.inflight == 2
        rest = await outbox.next_messages(5)
        assert [m.seq for m in rest] == [first[-1].seq + 1]
        outbox.ack(first[0])
        outbox.release(first[1:] + rest)
        again = await outbox.next_messages(5)
        assert [m.seq for m in again] == [first[1].seq, rest[0].seq]


async def test_what_was_read_ahead_waits_for_an_alarm_and_for_a_resend(tmp_path: Path) -> None:
    """The outbox reads messages ahead of the uplink's requests; an alarm stored meanwhile
    still goes first, and a released message still goes before those read after it."""
    async with running_outbox(tmp_path, commit_interval=0.01, batch_max=1) as (bus, outbox):
        for reading in readings("a", 10):
            await bus.publish(reading)
        while outbox.stats.messages < 10:
            await asyncio.wait_for(outbox.committed.wait(), 5)
        (t1,) = await outbox.next_messages(1)  # and nine more read ahead
        await bus.publish(Event(kind="alarm.x", source="a", severity=Severity.CRITICAL))
        while outbox.stats.messages < 11:
            await asyncio.wait_for(outbox.committed.wait(), 5)
        (alarm,) = await outbox.next_messages(1)
        assert alarm.priority is Priority.ALARM
        (t2,) = await outbox.next_messages(1)
        assert t2.seq > t1.seq and t2.priority is Priority.TELEMETRY
        outbox.release([t1])  # the link dropped before t1's PUBACK
        again = await outbox.next_messages(3)
        assert [m.seq for m in again][:1] == [t1.seq]
        values = [telemetry_readings(json.loads(m.body))[0]["value"] for m in again]
        assert values == sorted(values)  # per device in measurement order


def test_eviction_report_is_stored_with_the_eviction_and_is_exact(tmp_path: Path) -> None:
    s = store(tmp_path, max_bytes=30_000)
    reports: list[dict[str, int]] = []

    def reporter(why: str, counts: dict[str, int]) -> list:  # type: ignore[type-arg]
        reports.append(dict(counts))
        event = Event(kind="outbox.dropped", source="outbox", data={"why": why, **counts})
        return pack([event], "n1", 1, 0)

    in_flight = None
    for round_ in range(60):
        s.commit(
            pack(readings("a", 5, start=round_ * 5), "n1", 5, 0),
            (),
            protect={in_flight} if in_flight else (),
            reporter=reporter,
        )
        if in_flight is None:
            in_flight = s.peek(1, set())[0].seq
        assert s.stats.bytes <= 30_000
    msgs = s.peek(1000, set())
    stored = [json.loads(m.body)["data"] for m in msgs if m.topic == "events/outbox.dropped"]
    assert sum(r["telemetry"] for r in stored) == sum(r["telemetry"] for r in reports)
    assert sum(r["telemetry"] for r in reports) == s.stats.evicted["telemetry"]
    # the message being sent was never evicted, and so is still there
    assert in_flight in {m.seq for m in msgs}
    s.close()


def test_expiry_report_is_stored(tmp_path: Path) -> None:
    s = store(
        tmp_path, ttl={Priority.ALARM: 100.0, Priority.EVENT: 100.0, Priority.TELEMETRY: 10.0}
    )
    s.commit(pack(readings("a", 4), "n1", 2, 0), ())

    def reporter(why: str, counts: dict[str, int]) -> list:  # type: ignore[type-arg]
        return pack(
            [Event(kind="outbox.dropped", source="outbox", data={"why": why, **counts})],
            "n1",
            1,
            50,
        )

    assert s.expire(now=50, reporter=reporter) == {"telemetry": 4}
    (report,) = s.peek(10, set())
    assert json.loads(report.body)["data"] == {"why": "expired", "telemetry": 4}
    s.close()


def batch(device: str, values: list[int]) -> ReadingBatch:
    n = len(values)
    return ReadingBatch(
        device=device,
        points=tuple(f"r{i}" for i in range(n)),
        values=tuple(values),
        units=("m",) * n,
        qualities=(Quality.GOOD,) * (n - 1) + (Quality.BAD,),
        node="n1",
    )


def test_a_poll_batch_becomes_the_same_telemetry_as_its_readings_one_by_one() -> None:
    poll = batch("a", [5, 6, 7])
    (msg,) = pack([poll], "n1", batch_max=100, now=0)
    body = json.loads(msg.body)
    assert msg.count == 3 and msg.topic == "telemetry/a"
    one_by_one = [
        {k: v for k, v in r.to_dict().items() if k not in ("node", "device")}
        for r in poll.readings()
    ]
    assert telemetry_readings(body) == one_by_one
    ids = [r["id"] for r in telemetry_readings(body)]
    assert len(set(ids)) == 3 and ids == sorted(ids)  # unique ULIDs in measurement order
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", i) for i in ids)
    assert [p["ts"] for p in body["polls"]] == [one_by_one[0]["ts"]]  # one moment, once
    # a batch and single readings of one device share its messages, in arrival order
    mixed = pack([poll, *readings("a", 2, start=100), batch("a", [9])], "n1", 4, 0)
    values = [r["value"] for m in mixed for r in telemetry_readings(json.loads(m.body))]
    assert values == [5, 6, 7, 100, 101, 9]
    assert [m.count for m in mixed] == [3, 3]  # a poll is never split across messages
    # a poll larger than a message's worth travels alone, whole
    big, small = pack([batch("a", list(range(7))), batch("a", [1])], "n1", 4, 0)
    assert (big.count, small.count) == (7, 1)
    assert [r["value"] for r in telemetry_readings(json.loads(big.body))] == list(range(7))


def test_telemetry_format_1_has_an_object_per_reading_for_older_back_ends() -> None:
    poll, singles = batch("a", [5, 6, 7]), readings("a", 2)
    (v1,) = pack([poll, *singles], "n1", batch_max=100, now=0, telemetry_format=1)
    (v2,) = pack([poll, *singles], "n1", batch_max=100, now=0)
    body = json.loads(v1.body)
    assert "format" not in body and "polls" not in body
    assert body["readings"] == [
        {k: v for k, v in r.to_dict().items() if k not in ("node", "device")}
        for r in [*poll.readings(), *singles]
    ]
    # the same poll in format 2 decodes to the same readings, ids included
    assert telemetry_readings(json.loads(v2.body))[:3] == body["readings"][:3]
    assert v1.count == v2.count == 5


def test_a_reading_batch_refuses_ragged_or_oversized_columns() -> None:
    with pytest.raises(ValueError, match="1 to 1024 points"):
        ReadingBatch(device="a", points=("x", "y"), values=(1,), units=(None,) * 2,
                     qualities=(Quality.GOOD,) * 2)  # fmt: skip
    with pytest.raises(ValueError, match="1 to 1024 points"):
        ReadingBatch(device="a", points=(), values=(), units=(), qualities=())


def test_totals_stay_exact_without_counting_the_file(tmp_path: Path) -> None:
    """The running totals a commit keeps match what a full count of the file says, through
    inserts, acknowledgements, evictions, expiry and a rolled-back commit."""
    s = store(tmp_path, max_bytes=12_000)

    def counted() -> tuple[int, int]:
        return s.db.execute("SELECT count(*), coalesce(sum(size), 0) FROM messages").fetchone()

    for i in range(40):
        s.commit(pack([batch(f"d{i % 3}", list(range(20)))], "n1", 100, float(i)), ())
        assert (s.stats.messages, s.stats.bytes) == counted()
    assert s.stats.evicted["telemetry"] > 0  # the budget was enforced on the way
    first = s.peek(5, set())
    s.commit([], [m.seq for m in first])
    assert (s.stats.messages, s.stats.bytes) == counted()

    class Boom(Exception):
        pass

    def failing(why: str, counts: dict[str, int]) -> list[Any]:
        raise Boom

    before = (s.stats.messages, s.stats.bytes)
    with pytest.raises(Boom):  # the eviction report fails: the whole commit rolls back
        s.commit(pack([batch("d9", list(range(200)))] * 30, "n1", 100, 50.0), (), reporter=failing)
    assert (s.stats.messages, s.stats.bytes) == before == counted()
    s.expire(now=10**9)
    assert (s.stats.messages, s.stats.bytes) == counted() == (0, 0)
    s.close()


def test_peek_resumes_after_what_it_handed_out(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.commit(pack(readings("a", 5), "n1", 1, 0), ())
    first = s.peek(2, set())
    after = {Priority.TELEMETRY: first[-1].seq}
    rest = s.peek(10, set(), after)
    assert [m.seq for m in rest] == [m.seq for m in s.peek(10, set())][2:]
    # an alarm stored later is still sent first, whatever telemetry was handed out
    alarm = Event(kind="alarm.x", source="a", severity=Severity.CRITICAL)
    s.commit(pack([alarm], "n1", 1, 0), ())
    assert s.peek(1, set(), {**after, Priority.ALARM: 0})[0].priority is Priority.ALARM
    s.close()


async def test_a_caught_up_uplink_gets_new_messages_from_memory_exactly_as_stored(
    tmp_path: Path,
) -> None:
    """Once the uplink has read everything, what a commit stores is handed over without
    reading the file again: the same seqs, bodies and order as the file holds."""
    async with running_outbox(tmp_path, commit_interval=0.01, batch_max=1) as (bus, outbox):
        assert outbox.store is not None
        reads = 0
        peek = outbox.store.peek

        def counted(*args: Any) -> Any:
            nonlocal reads
            reads += 1
            return peek(*args)

        outbox.store.peek = counted  # type: ignore[method-assign]
        await bus.publish(readings("a", 1)[0])
        (first,) = await asyncio.wait_for(outbox.next_messages(10), 5)  # read from the file
        assert reads >= 1
        read_before = reads
        got = []
        for value in range(1, 6):
            await bus.publish(Reading(device="a", point="p", value=value, ts=T0))
            got += await asyncio.wait_for(outbox.next_messages(10), 5)
        await bus.publish(Event(kind="alarm.x", source="a", severity=Severity.CRITICAL))
        await bus.publish(Reading(device="a", point="p", value=6, ts=T0))
        while len(got) < 7:
            got += await asyncio.wait_for(outbox.next_messages(10), 5)
        assert reads == read_before  # everything after the first came from the commits
        stored = {m.seq: m for m in OutboxStore(tmp_path / "o.db", max_bytes=10**8).peek(99, ())}
        for m in [first, *got]:
            assert stored[m.seq].body == m.body and stored[m.seq].priority == m.priority
        values = [
            telemetry_readings(json.loads(m.body))[0]["value"]
            for m in got
            if m.priority is Priority.TELEMETRY
        ]
        assert values == [1, 2, 3, 4, 5, 6]
        seqs = [m.seq for m in [first, *got]]
        assert len(set(seqs)) == len(seqs)


async def test_a_commit_that_evicts_is_read_from_the_file_with_its_report(tmp_path: Path) -> None:
    async with running_outbox(tmp_path, commit_interval=0.01, batch_max=1, max_bytes=4096) as (
        bus,
        outbox,
    ):
        await bus.publish(readings("a", 1)[0])
        (first,) = await asyncio.wait_for(outbox.next_messages(10), 5)
        outbox.ack(first)
        for reading in readings("a", 40, start=1):
            await bus.publish(reading)
        got: list[Any] = []
        while not any(m.priority is Priority.EVENT for m in got):
            got += await asyncio.wait_for(outbox.next_messages(100), 5)
            for m in got:
                outbox.ack(m)
        report = next(json.loads(m.body) for m in got if m.priority is Priority.EVENT)
        assert report["kind"] == "outbox.dropped"
        values = [
            telemetry_readings(json.loads(m.body))[0]["value"]
            for m in got
            if m.priority is Priority.TELEMETRY
        ]
        assert values == sorted(values)
        # what was sent plus what the report says was evicted is everything stored
        evicted = sum(outbox.stats.evicted.values())
        assert evicted > 0
        assert len(values) + evicted + outbox.stats.messages >= 40


async def test_an_alarm_is_committed_at_once_with_the_telemetry_before_it(tmp_path: Path) -> None:
    """Telemetry waits up to commit_interval to share a commit; an event or alarm does not
    wait, and takes what is queued with it (in one transaction, in order)."""
    async with running_outbox(tmp_path, commit_interval=5.0) as (bus, outbox):
        for reading in readings("a", 3):
            await bus.publish(reading)
        await asyncio.sleep(0.05)
        assert outbox.stats.accepted == 0  # lingering: 5 s
        await bus.publish(Event(kind="alarm.x", source="a", severity=Severity.CRITICAL))
        await asyncio.wait_for(outbox.committed.wait(), 2)
        assert outbox.stats.accepted == 4
        msgs = await asyncio.wait_for(outbox.next_messages(10), 2)
        assert [m.priority for m in msgs] == [Priority.ALARM, Priority.TELEMETRY]
        assert [r["value"] for r in telemetry_readings(json.loads(msgs[1].body))] == [0, 1, 2]
