"""In-process path from drivers and models to consumers (rules, outbox, displays).

Every subscriber has its own bounded queue, so memory stays bounded whatever a consumer
does. What happens when a queue is full is the subscriber's explicit policy:

* ``DROP_OLDEST`` - the publisher never waits; the oldest queued record is discarded to
  make room. For live consumers where the newest value matters most.
* ``BACKPRESSURE`` - the publisher waits up to ``max_wait`` seconds for room (slowing the
  driver that produced the record); if the queue is still full the new record is
  discarded. For consumers that must see everything, such as the outbox.

Either way a discarded record is counted on the subscription, the first drop of a streak
is logged as a warning and the end of the streak (queue has room again) once more with
the number lost. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Self

from gateway.kernel.records import Record

logger = logging.getLogger(__name__)


class DropPolicy(StrEnum):
    """What a full subscription queue does with the next record."""

    DROP_OLDEST = "drop_oldest"
    BACKPRESSURE = "backpressure"


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """Counters of one subscription, for health and metrics."""

    name: str
    depth: int
    maxsize: int
    delivered: int
    dropped: int
    policy: DropPolicy


class Subscription:
    """A consumer's bounded queue on the bus. Iterate it, or call `get`/`get_batch`."""

    def __init__(
        self,
        bus: Bus,
        name: str,
        *,
        maxsize: int,
        policy: DropPolicy,
        kinds: tuple[type, ...] | None,
        max_wait: float,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"subscription {name!r}: maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.policy = policy
        self.kinds = kinds
        self.max_wait = max_wait
        self._bus = bus
        self._queue: asyncio.Queue[Record] = asyncio.Queue(maxsize)
        self.delivered = 0
        self.dropped = 0
        self._streak = 0  # drops since the queue last had room

    def wants(self, record: Record) -> bool:
        return self.kinds is None or isinstance(record, self.kinds)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def stats(self) -> SubscriptionStats:
        return SubscriptionStats(
            name=self.name,
            depth=self.depth,
            maxsize=self._queue.maxsize,
            delivered=self.delivered,
            dropped=self.dropped,
            policy=self.policy,
        )

    async def offer(self, record: Record) -> None:
        """Queue `record` according to the subscription's policy."""
        if self.policy is DropPolicy.BACKPRESSURE and self._queue.full():
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives as the inner call completes
                async with asyncio.timeout(self.max_wait):
                    await self._queue.put(record)
            except TimeoutError:
                self._drop(record)
            else:
                self._delivered()
            return
        self.offer_nowait(record)

    def offer_nowait(self, record: Record) -> None:
        """Queue `record` without waiting: a full queue loses its oldest (DROP_OLDEST) or
        the new record (BACKPRESSURE), counted either way."""
        if self._queue.full():
            if self.policy is DropPolicy.DROP_OLDEST:
                self._drop(self._queue.get_nowait())
            else:
                self._drop(record)
                return
        self._queue.put_nowait(record)
        self._delivered()

    def _delivered(self) -> None:
        self.delivered += 1
        if self._streak and not self._queue.full():
            logger.info(
                "bus consumer %r caught up after dropping %d record(s)", self.name, self._streak
            )
            self._streak = 0

    def _drop(self, record: Record) -> None:
        self.dropped += 1
        self._streak += 1
        if self._streak == 1:
            logger.warning(
                "bus consumer %r is too slow (queue of %d full, policy %s): dropping records",
                self.name,
                self._queue.maxsize,
                self.policy.value,
            )
        logger.debug("bus consumer %r dropped %s", self.name, record.id)

    async def get(self) -> Record:
        return await self._queue.get()

    def get_nowait(self) -> Record | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def get_batch(
        self, max_items: int, linger: float, *, wake: asyncio.Event | None = None
    ) -> list[Record]:
        """Wait for one record, then collect up to `max_items` arriving within `linger` s.

        If `wake` is given and gets set while the queue is empty, return an empty list
        (the caller has other work, such as acknowledgements to commit).
        """
        first = await self._first(wake) if wake is not None else await self._queue.get()
        if first is None:
            return []
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + linger
        while len(batch) < max_items:
            item = self.get_nowait()
            if item is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    # a get() interrupted by the timeout leaves its item in the queue
                    async with asyncio.timeout(remaining):
                        item = await self._queue.get()
                except TimeoutError:
                    break
            batch.append(item)
        return batch

    async def _first(self, wake: asyncio.Event) -> Record | None:
        item = self.get_nowait()
        if item is not None or wake.is_set():
            return item
        async with asyncio.TaskGroup() as tg:
            getter = tg.create_task(self._queue.get(), name=f"bus[{self.name}].get")
            woken = tg.create_task(wake.wait(), name=f"bus[{self.name}].wake")
            await asyncio.wait((getter, woken), return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            getter.cancel()
        # a getter that completed before its cancellation keeps its item
        if not getter.cancelled():
            return getter.result()
        return None

    def close(self) -> None:
        self._bus.unsubscribe(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Record]:
        while True:
            yield await self._queue.get()


class Bus:
    """Fan-out of records to subscriptions; publishers never see who consumes."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self.published = 0

    def subscribe(
        self,
        name: str,
        *,
        maxsize: int = 1000,
        policy: DropPolicy = DropPolicy.DROP_OLDEST,
        kinds: Iterable[type] | None = None,
        max_wait: float = 5.0,
    ) -> Subscription:
        """A new subscription; use it as a context manager or `close()` it."""
        sub = Subscription(
            self,
            name,
            maxsize=maxsize,
            policy=policy,
            kinds=tuple(kinds) if kinds is not None else None,
            max_wait=max_wait,
        )
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    async def publish(self, record: Record) -> None:
        """Deliver `record` to every interested subscription (may wait on backpressure)."""
        self.published += 1
        for sub in tuple(self._subs):
            if sub.wants(record):
                await sub.offer(record)

    def publish_nowait(self, record: Record) -> None:
        """Deliver without waiting (callbacks, thread hand-offs); full queues drop, counted."""
        self.published += 1
        for sub in tuple(self._subs):
            if sub.wants(record):
                sub.offer_nowait(record)

    def stats(self) -> list[SubscriptionStats]:
        return [sub.stats() for sub in self._subs]
