from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.bus import Bus, DropPolicy, Wake
from gateway.kernel.records import Event, Reading, Record


def reading(n: int, device: str = "d1") -> Reading:
    return Reading(device=device, point="p", value=n)


async def test_every_subscriber_gets_every_record_in_order() -> None:
    bus = Bus()
    with bus.subscribe("a") as a, bus.subscribe("b") as b:
        for n in range(5):
            await bus.publish(reading(n))
        assert [(await a.get()).value for _ in range(5)] == [0, 1, 2, 3, 4]
        assert [(await b.get()).value for _ in range(5)] == [0, 1, 2, 3, 4]
    assert bus.stats() == []


async def test_drop_oldest_keeps_newest_counts_and_reports(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.bus")
    bus = Bus()
    with bus.subscribe("slow", maxsize=3, policy=DropPolicy.DROP_OLDEST) as sub:
        for n in range(10):
            await bus.publish(reading(n))
        assert sub.depth == 3
        assert sub.dropped == 7
        assert [sub.get_nowait().value for _ in range(3)] == [7, 8, 9]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "'slow' is too slow" in warnings[0].getMessage()
        # the streak ends once a record fits without dropping
        await bus.publish(reading(10))
        assert any("caught up after dropping 7" in r.getMessage() for r in caplog.records)
        assert sub.stats().dropped == 7


async def test_memory_stays_bounded_when_a_consumer_never_reads() -> None:
    bus = Bus()
    with bus.subscribe("stuck", maxsize=100) as sub:
        for n in range(20_000):
            bus.publish_nowait(reading(n))
        assert sub.depth == 100
        assert sub.dropped == 19_900
        assert sub.delivered == 20_000


async def test_backpressure_slows_the_publisher_instead_of_dropping() -> None:
    bus = Bus()
    with bus.subscribe("outbox", maxsize=2, policy=DropPolicy.BACKPRESSURE, max_wait=5) as sub:
        received: list[object] = []

        async def consume() -> None:
            for _ in range(20):
                received.append((await sub.get()).value)
                await asyncio.sleep(0.001)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(consume(), name="consumer")
            for n in range(20):
                await bus.publish(reading(n))
        assert received == list(range(20))
        assert sub.dropped == 0


async def test_backpressure_gives_up_after_max_wait_and_counts_the_drop() -> None:
    bus = Bus()
    with bus.subscribe("dead", maxsize=1, policy=DropPolicy.BACKPRESSURE, max_wait=0.05) as sub:
        await bus.publish(reading(0))
        await bus.publish(reading(1))  # waits 50 ms, then drops the new record
        assert sub.dropped == 1
        assert sub.get_nowait().value == 0
        # publish_nowait never waits: the new record is dropped too
        await bus.publish(reading(2))
        bus.publish_nowait(reading(3))
        assert sub.dropped == 2
        assert sub.get_nowait().value == 2


async def test_kind_filter_and_batches() -> None:
    bus = Bus()
    with bus.subscribe("events", kinds=[Event]) as events, bus.subscribe("all") as every:
        await bus.publish(reading(1))
        await bus.publish(Event(kind="k", source="s"))
        await bus.publish(reading(2))
        assert events.depth == 1
        batch = await every.get_batch(10, linger=0.01)
        assert len(batch) == 3


async def test_get_batch_stops_at_max_items() -> None:
    bus = Bus()
    with bus.subscribe("all") as sub:
        for n in range(7):
            await bus.publish(reading(n))
        assert [r.value for r in await sub.get_batch(5, linger=1)] == [0, 1, 2, 3, 4]
        assert [r.value for r in await sub.get_batch(5, linger=0.01)] == [5, 6]


async def test_get_batch_lingers_for_records_and_a_full_batch_ends_the_linger() -> None:
    bus = Bus()
    with bus.subscribe("all", maxsize=3) as sub:
        lingering = asyncio.create_task(sub.get_batch(5, linger=0.2), name="test.linger")
        await asyncio.sleep(0.01)
        await bus.publish(reading(0))  # wakes it; the linger starts
        await asyncio.sleep(0.05)
        await bus.publish(reading(1))  # does not end the linger
        await asyncio.sleep(0.01)
        assert not lingering.done()
        assert [r.value for r in await asyncio.wait_for(lingering, 5)] == [0, 1]
        # a batch as large as the queue can hold ends it at once, never a full queue's wait
        lingering = asyncio.create_task(sub.get_batch(5, linger=60), name="test.linger2")
        await bus.publish(reading(2))
        await asyncio.sleep(0.01)
        for n in range(3, 6):
            await bus.publish(reading(n))
        got = await asyncio.wait_for(lingering, 5)
        assert [r.value for r in got] == [2, 3, 4, 5]


async def test_an_urgent_record_ends_the_linger_and_so_does_one_already_queued() -> None:
    bus = Bus()

    def urgent(record: Record) -> bool:
        return isinstance(record, Event)

    with bus.subscribe("all", maxsize=100, urgent=urgent) as sub:
        lingering = asyncio.create_task(sub.get_batch(50, linger=60), name="test.urgent")
        await asyncio.sleep(0.01)
        await bus.publish(reading(0))  # the linger starts: 60 s
        await bus.publish(reading(1))
        await asyncio.sleep(0.01)
        assert not lingering.done()
        await bus.publish(Event(kind="alarm.x", source="s"))
        got = await asyncio.wait_for(lingering, 5)
        assert [type(r).__name__ for r in got] == ["Reading", "Reading", "Event"]
        # an urgent record at the head of a batch, or queued behind it: no linger at all
        await bus.publish(Event(kind="alarm.y", source="s"))
        await bus.publish(reading(2))
        assert len(await asyncio.wait_for(sub.get_batch(50, linger=60), 5)) == 2
        await bus.publish(reading(3))
        await bus.publish(Event(kind="alarm.z", source="s"))
        assert len(await asyncio.wait_for(sub.get_batch(50, linger=60), 5)) == 2


def test_subscription_rejects_a_zero_size_queue() -> None:
    with pytest.raises(ValueError, match="maxsize must be >= 1"):
        Bus().subscribe("bad", maxsize=0)


async def test_a_wake_interrupts_a_waiting_consumer_and_a_record_still_wins() -> None:
    bus = Bus()
    with bus.subscribe("c", maxsize=10) as sub:
        wake = Wake()
        waiting = asyncio.create_task(sub.get_batch(10, 0.0, wake=wake), name="test.wait")
        await asyncio.sleep(0.01)
        assert not waiting.done()
        wake.set()
        assert await asyncio.wait_for(waiting, 1) == []  # woken with nothing queued
        # set before the record: a queued record is returned, never lost to the wake
        await bus.publish(Reading(device="d", point="p", value=1))
        got = await sub.get_batch(10, 0.0, wake=wake)
        assert [r.value for r in got] == [1]  # type: ignore[union-attr]
        wake.clear()
        waiting = asyncio.create_task(sub.get_batch(10, 0.0, wake=wake), name="test.wait2")
        await asyncio.sleep(0.01)
        await bus.publish(Reading(device="d", point="p", value=2))
        assert [r.value for r in await asyncio.wait_for(waiting, 1)] == [2]  # type: ignore[union-attr]
        # a consumer cancelled while waiting leaves the subscription usable
        waiting = asyncio.create_task(sub.get(), name="test.cancel")
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await bus.publish(Reading(device="d", point="p", value=3))
        assert (await asyncio.wait_for(sub.get(), 1)).value == 3  # type: ignore[union-attr]
        assert wake._waiters == []  # nothing left registered
