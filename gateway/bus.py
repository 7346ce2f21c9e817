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
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
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


class Wake:
    """A flag that interrupts a consumer waiting in `Subscription.get_batch` (other work
    has come: acknowledgements to commit, a timer due). Like an `asyncio.Event`, but a
    subscription can wait for it and for its next record on one future, without a task."""

    def __init__(self) -> None:
        self._flag = False
        self._waiters: list[asyncio.Future[None]] = []

    def set(self) -> None:
        self._flag = True
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    async def wait(self) -> None:
        if self._flag:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)


class Subscription:
    """A consumer's bounded queue on the bus. Iterate it, or call `get`/`get_batch`.

    One consumer per subscription: it waits on a single future that the next record (or
    its `Wake`) resolves; a record costs an append and, if the consumer sleeps, one
    wake-up, not a task."""

    def __init__(
        self,
        bus: Bus,
        name: str,
        *,
        maxsize: int,
        policy: DropPolicy,
        kinds: tuple[type, ...] | None,
        max_wait: float,
        accept: Callable[[Record], bool] | None = None,
        urgent: Callable[[Record], bool] | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"subscription {name!r}: maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.policy = policy
        self.kinds = kinds
        self.accept = accept
        self.urgent = urgent  # a record that ends a batch's linger
        self.max_wait = max_wait
        self.maxsize = maxsize
        self._bus = bus
        self._items: deque[Record] = deque()
        self._getter: asyncio.Future[None] | None = None  # the consumer, asleep
        self._wake_at = 1  # records queued that wake it
        self._putters: deque[asyncio.Future[None]] = deque()  # publishers waiting for room
        self.delivered = 0
        self.dropped = 0
        self._streak = 0  # drops since the queue last had room

    def wants(self, record: Record) -> bool:
        if self.kinds is not None and not isinstance(record, self.kinds):
            return False
        return self.accept is None or self.accept(record)

    @property
    def depth(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def stats(self) -> SubscriptionStats:
        return SubscriptionStats(
            name=self.name,
            depth=self.depth,
            maxsize=self.maxsize,
            delivered=self.delivered,
            dropped=self.dropped,
            policy=self.policy,
        )

    async def offer(self, record: Record) -> None:
        """Queue `record` according to the subscription's policy."""
        if self.policy is DropPolicy.BACKPRESSURE and self.full():
            deadline = asyncio.get_running_loop().time() + self.max_wait
            while self.full():
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0 or not await self._room(remaining):
                    self._drop(record)
                    return
        self.offer_nowait(record)

    async def _room(self, within: float) -> bool:
        """Wait up to `within` s for the consumer to take a record; False if it did not.
        (A timer on a future, not asyncio.timeout: no exception on the hot path.)"""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._putters.append(fut)
        timer = loop.call_later(within, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            if fut in self._putters:
                self._putters.remove(fut)
        return not self.full()

    def offer_nowait(self, record: Record) -> None:
        """Queue `record` without waiting: a full queue loses its oldest (DROP_OLDEST) or
        the new record (BACKPRESSURE), counted either way."""
        if self.full():
            if self.policy is DropPolicy.DROP_OLDEST:
                self._drop(self._items.popleft())
            else:
                self._drop(record)
                return
        self._items.append(record)
        getter = self._getter
        if (
            getter is not None
            and (
                len(self._items) >= self._wake_at
                or (self.urgent is not None and self.urgent(record))
            )
            and not getter.done()
        ):
            getter.set_result(None)
        self._delivered()

    def _delivered(self) -> None:
        self.delivered += 1
        if self._streak and not self.full():
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
                self.maxsize,
                self.policy.value,
            )
        logger.debug("bus consumer %r dropped %s", self.name, record.id)

    def _take(self) -> Record:
        record = self._items.popleft()
        while self._putters:
            fut = self._putters.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        return record

    async def _wait(
        self, wake: Wake | None = None, within: float | None = None, gather: int = 1
    ) -> bool:
        """Wait until `gather` records are queued (True), or `wake` is set or `within` s
        pass (then True if any is)."""
        if len(self._items) >= gather:
            return True
        if wake is not None and wake.is_set():
            return False
        if self._getter is not None:
            raise RuntimeError(f"subscription {self.name!r} has a consumer already")
        loop = asyncio.get_running_loop()
        fut = self._getter = loop.create_future()
        self._wake_at = gather
        if wake is not None:
            wake._waiters.append(fut)  # the two are made for each other
        timer = loop.call_later(within, _resolve, fut) if within is not None else None
        try:
            await fut
        finally:
            self._getter = None
            self._wake_at = 1
            if timer is not None:
                timer.cancel()
            if wake is not None and fut in wake._waiters:
                wake._waiters.remove(fut)
        return bool(self._items)

    async def get(self) -> Record:
        while not await self._wait():
            pass
        return self._take()

    def get_nowait(self) -> Record | None:
        return self._take() if self._items else None

    async def get_batch(
        self, max_items: int, linger: float, *, wake: Wake | None = None
    ) -> list[Record]:
        """Wait for one record, then collect up to `max_items` arriving within `linger` s.

        If `wake` is given and gets set while the queue is empty, return an empty list
        (the caller has other work, such as acknowledgements to commit).
        """
        while not await self._wait(wake):
            if wake is not None and wake.is_set():
                return []
        batch = [self._take()]
        # the rest: one sleep through the linger, cut short only by a full batch or an
        # urgent record (not a wake-up per record)
        gather = min(max_items - 1, self.maxsize)
        if gather > 0 and linger > 0 and not self._urgent_queued(batch[0], gather):
            await self._wait(within=linger, gather=gather)
        while self._items and len(batch) < max_items:
            batch.append(self._take())
        return batch

    def _urgent_queued(self, first: Record, gather: int) -> bool:
        """Whether a batch starting with `first` has an urgent record already (a full
        batch does not linger anyway, so its queue is not looked through)."""
        urgent = self.urgent
        if urgent is None or len(self._items) >= gather:
            return False
        return urgent(first) or any(urgent(r) for r in self._items)

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
            yield await self.get()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


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
        accept: Callable[[Record], bool] | None = None,
        urgent: Callable[[Record], bool] | None = None,
    ) -> Subscription:
        """A new subscription; use it as a context manager or `close()` it.

        `accept`, if given, is asked (synchronously, in the publisher's call) whether a
        record of the wanted kinds is queued at all: a consumer that needs only a glance
        at most records takes it there, and is woken only for the rest. `urgent`, if
        given, names the records that end `get_batch`'s linger: the batch is taken as it
        is when one arrives."""
        sub = Subscription(
            self,
            name,
            maxsize=maxsize,
            policy=policy,
            kinds=tuple(kinds) if kinds is not None else None,
            max_wait=max_wait,
            accept=accept,
            urgent=urgent,
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
