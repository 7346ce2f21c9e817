"""Durable store-and-forward outbox on SQLite (WAL).

What the node measured is kept here until the broker has acknowledged it.

* **Accepted means durable.** The writer takes records from the bus, packs readings of one
  device into telemetry messages, and commits everything that arrived within
  ``commit_interval`` in one transaction (an event or alarm ends the wait: it is
  committed at once, with whatever telemetry came before it). With ``fsync: full`` (the
  default) each commit is fsynced before it returns, so a committed message survives a
  process crash *and* a power cut; ``fsync: normal`` survives a process crash but may
  lose the last commits on power loss (the file stays consistent either way). Records
  are in memory only while they wait for the next commit, at most ``commit_interval``.
* **Deleted only after PUBACK.** The uplink acknowledges a message once the broker's PUBACK
  arrived; deletions are committed with the next batch. A crash in between means the
  message is sent again with the same id and sequence number (a QoS 1 duplicate).
* **Bounded.** The stored payload bytes (plus a fixed per-row overhead) stay within
  ``max_bytes``. When a commit would exceed it, the oldest messages of the lowest priority
  class go first (telemetry, then detections and events, alarms last). Each class has a
  time to live. Evictions and expiries are counted and reported as an ``outbox.dropped``
  event, which is itself stored and sent.
* **Ordered.** Every message gets a per-node sequence number (SQLite's AUTOINCREMENT row
  id, never reused). The uplink sends by class priority, then sequence; all messages of
  one device and class therefore arrive in the order they were measured.

All SQLite work happens on one thread owned by the outbox; the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import time
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from gateway.bus import Bus, DropPolicy, Wake
from gateway.kernel.component import Ready
from gateway.kernel.records import (
    BLOCK_IDS,
    Detection,
    Event,
    Reading,
    ReadingBatch,
    Record,
    Severity,
    id_suffix,
    iso_time,
    new_id,
)
from gateway.snapshots import SnapshotStore

logger = logging.getLogger(__name__)

T = TypeVar("T")

ROW_OVERHEAD = 96  # bytes of index and row header counted per message against the budget
READ_AHEAD = 64  # messages read from the file per trip to its thread, at least
REPORT_RESERVE = 2048  # room kept for the outbox.dropped event that reports an eviction
SCHEMA_VERSION = 2  # 2: raw (binary) messages such as snapshots


class Priority(IntEnum):
    """Classes of messages; a lower value is sent first and evicted last."""

    ALARM = 0
    EVENT = 1
    TELEMETRY = 2


DEFAULT_TTL: dict[Priority, float] = {
    Priority.ALARM: 30 * 86400.0,
    Priority.EVENT: 7 * 86400.0,
    Priority.TELEMETRY: 2 * 86400.0,
}


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message waiting in the outbox."""

    seq: int
    id: str
    priority: Priority
    topic: str  # relative to the node's topic root, e.g. "telemetry/pump-1"
    stream: str  # ordering key (device or event source)
    body: bytes  # JSON object without "seq", or raw bytes (a JPEG)
    count: int  # records inside (readings in a telemetry batch)
    raw: bool = False

    def payload(self) -> bytes:
        """What is sent upstream: a JSON body with the sequence number added, or raw bytes."""
        if self.raw:
            return self.body
        return b'{"seq":%d,' % self.seq + self.body[1:]


Reporter = Callable[[str, dict[str, int]], list["_Pending"]]


@dataclass
class OutboxStats:
    """Counters for health, metrics and tests."""

    messages: int = 0
    bytes: int = 0
    accepted: int = 0  # records committed
    sent: int = 0  # messages acknowledged by the broker
    delivered: int = 0  # records in them
    evicted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    expired: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_priority: dict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass(frozen=True, slots=True)
class _Pending:
    """A message packed in memory, before it has a sequence number."""

    id: str
    priority: Priority
    topic: str
    stream: str
    body: bytes
    count: int
    created: float
    raw: bool = False


def _dumps(obj: dict[str, Any]) -> bytes:
    # orjson: compact UTF-8 in one pass; what it cannot encode natively (a Path, a
    # datetime in an event's data) becomes its text, as json.dumps(default=str) did
    try:
        return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, say: the slow, general way
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def priority_of(record: Record) -> Priority:
    if isinstance(record, Event):
        alarm = record.kind.startswith("alarm") or record.severity in (
            Severity.MAJOR,
            Severity.CRITICAL,
        )
        return Priority.ALARM if alarm else Priority.EVENT
    if isinstance(record, Detection):
        return Priority.EVENT
    return Priority.TELEMETRY


TelemetryFormat = Literal[1, 2]


def pack(
    records: Sequence[Record],
    node: str,
    batch_max: int,
    now: float,
    *,
    locate: Callable[[], dict[str, Any] | None] | None = None,
    snapshots: SnapshotStore | None = None,
    telemetry_format: TelemetryFormat = 2,
) -> list[_Pending]:
    """Turn records into messages: readings grouped per device (in arrival order, at most
    `batch_max` per message), every event and detection a message of its own; an event
    without a location gets the node's current one from `locate`; a detection whose frame
    has a JPEG in `snapshots` names it and is followed by a raw message carrying it, and so
    is an event whose `snapshot` id has a JPEG there.

    Telemetry format 2 (docs/mqtt-api.md) carries the readings of one time as a `poll` of
    columns, never split across messages; format 1 one object per reading."""
    out: list[_Pending] = []
    telemetry: dict[str, _Telemetry] = {}
    pictured: set[str] = set()
    for record in records:
        if isinstance(record, ReadingBatch | Reading):
            lane = telemetry.get(record.device)
            if lane is None:
                lane = telemetry[record.device] = (
                    _Polls(batch_max) if telemetry_format == 2 else _Rows()
                )
            lane.add(record)
            continue
        body = record.to_dict()
        body["node"] = node
        if isinstance(record, Event) and record.location is None and locate is not None:
            body["location"] = locate()
        jpeg = None
        if isinstance(record, Event):
            topic, stream = f"events/{record.kind}", record.source
            if snapshots is not None and record.snapshot:
                jpeg = snapshots.take(record.snapshot)  # the event's own picture
                snap = f"snapshots/{record.snapshot}"
        else:
            topic, stream = "events/detection", record.camera
            if snapshots is not None and record.frame_id:
                jpeg = snapshots.take(record.frame_id)
                snap = f"snapshots/{record.frame_id}"
                if jpeg is not None or record.frame_id in pictured:
                    body["snapshot"] = snap  # every detection of the frame names its picture
                    pictured.add(record.frame_id)
        out.append(_Pending(record.id, priority_of(record), topic, stream, _dumps(body), 1, now))
        if jpeg is not None:
            # the picture follows its detection, at telemetry priority: events go first and
            # a full outbox drops pictures before any event
            out.append(_Pending(new_id(), Priority.TELEMETRY, snap, stream, jpeg, 1, now, True))
    for device, lane in telemetry.items():
        out.extend(lane.messages(node, device, batch_max, now))
    return out


class _Polls:
    """One device's readings as format 2 polls: columns of the readings of one time, their
    ids the poll's id with the readings' index as its last two characters."""

    def __init__(self, batch_max: int) -> None:
        self.polls: list[dict[str, Any]] = []
        # single readings of one time gather in one poll, up to a message's worth
        self._open: dict[str, Any] | None = None
        self._most = min(batch_max, BLOCK_IDS)

    def add(self, record: ReadingBatch | Reading) -> None:
        if isinstance(record, ReadingBatch):
            self._open = None
            poll: dict[str, Any] = {
                "id": record.ids + _FIRST,
                "ts": iso_time(record.ts),
                "points": record.points,
                "values": record.values,
                "units": record.units,
                "quality": record.qualities,  # orjson writes an enum as its value
            }
            self.polls.append(poll)
            return
        ts = iso_time(record.ts)
        last = self._open  # the last poll, made of single readings
        if last is not None and last["ts"] == ts and len(last["points"]) < self._most:
            last["points"].append(record.point)
            last["values"].append(record.value)
            last["units"].append(record.unit)
            last["quality"].append(record.quality)
            return
        poll = self._open = {
            "id": record.id[:-2] + _FIRST,
            "ts": ts,
            "points": [record.point],
            "values": [record.value],
            "units": [record.unit],
            "quality": [record.quality],
        }
        self.polls.append(poll)

    def messages(self, node: str, device: str, batch_max: int, now: float) -> list[_Pending]:
        """Whole polls, at most `batch_max` readings a message (a larger poll alone)."""
        out: list[_Pending] = []
        items: list[dict[str, Any]] = []
        count = 0
        for poll in self.polls:
            n = len(poll["points"])
            if items and count + n > batch_max:
                out.append(_telemetry(node, device, {"format": 2, "polls": items}, count, now))
                items, count = [], 0
            items.append(poll)
            count += n
        if items:
            out.append(_telemetry(node, device, {"format": 2, "polls": items}, count, now))
        return out


class _Rows:
    """One device's readings as format 1: an object per reading."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, record: ReadingBatch | Reading) -> None:
        if isinstance(record, ReadingBatch):
            self.rows.extend(record.to_dicts())
        else:
            self.rows.append(_reading_dict(record))

    def messages(self, node: str, device: str, batch_max: int, now: float) -> list[_Pending]:
        return [
            _telemetry(node, device, {"readings": chunk}, len(chunk), now)
            for start in range(0, len(self.rows), batch_max)
            if (chunk := self.rows[start : start + batch_max])
        ]


def _telemetry(node: str, device: str, content: dict[str, Any], count: int, now: float) -> _Pending:
    msg_id = new_id()
    body = {"id": msg_id, "node": node, "device": device, **content}
    return _Pending(
        msg_id, Priority.TELEMETRY, f"telemetry/{device}", device, _dumps(body), count, now
    )


_Telemetry = _Polls | _Rows
_FIRST = id_suffix(0)


def _reading_dict(r: Reading) -> dict[str, Any]:
    return {
        "id": r.id,
        "point": r.point,
        "value": r.value,
        "unit": r.unit,
        "quality": r.quality.value,
        "ts": iso_time(r.ts),
    }


def _not_telemetry(record: Record) -> bool:
    return not isinstance(record, ReadingBatch | Reading)


class OutboxStore:
    """The SQLite file. Synchronous: call only from the outbox's own thread."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        fsync: Literal["full", "normal"] = "full",
        ttl: dict[Priority, float] | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.ttl = ttl or dict(DEFAULT_TTL)
        self.stats = OutboxStats()
        # the messages the last commit stored (none if it evicted any), in seq order
        self.inserted: list[Message] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if fsync == 'full' else 'NORMAL'}")
        self.db.execute("PRAGMA journal_size_limit=16777216")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, SCHEMA_VERSION):
            raise RuntimeError(f"{path}: outbox schema {version} is newer than this software")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS messages (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL,
                priority INTEGER NOT NULL,
                topic TEXT NOT NULL,
                stream TEXT NOT NULL,
                body BLOB NOT NULL,
                count INTEGER NOT NULL,
                size INTEGER NOT NULL,
                created REAL NOT NULL,
                raw INTEGER NOT NULL DEFAULT 0
            );
            CREATE INDEX IF NOT EXISTS messages_by_priority ON messages(priority, seq);
            """
        )
        if version == 1:  # outboxes written before snapshots: add the column, keep the data
            self.db.execute("ALTER TABLE messages ADD COLUMN raw INTEGER NOT NULL DEFAULT 0")
        self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._refresh_stats()

    def _refresh_stats(self) -> None:
        """Count what the file holds (once, at open; commits keep the totals running)."""
        self._totals = {prio: [0, 0] for prio in Priority}  # messages, bytes
        for prio, n, size in self.db.execute(
            "SELECT priority, count(*), coalesce(sum(size), 0) FROM messages GROUP BY priority"
        ):
            self._totals[Priority(prio)] = [n, size]
        self._publish_stats()

    def _publish_stats(self) -> None:
        by = self.stats.by_priority
        by.clear()
        for prio, (n, _) in self._totals.items():
            if n:
                by[prio.name.lower()] = n
        self.stats.messages = sum(n for n, _ in self._totals.values())
        self.stats.bytes = sum(b for _, b in self._totals.values())

    def _count(self, priority: int, messages: int, size: int) -> None:
        total = self._totals[Priority(priority)]
        total[0] += messages
        total[1] += size

    def commit(
        self,
        pending: Sequence[_Pending],
        acked: Iterable[int],
        *,
        protect: Collection[int] = (),
        reporter: Reporter | None = None,
    ) -> dict[str, int]:
        """Insert `pending`, delete `acked` and enforce the budget, in one transaction.

        Evictions spare `protect` (messages in flight). If any happen, the message that
        `reporter` makes of them is stored in the same transaction, in room reserved for
        it, so that the report is exact. Returns the evictions by class.

        No part of it grows with the backlog: the totals are kept running (deletions
        return what they freed), and the eviction walks the index from the oldest.
        """
        evicted: dict[str, int] = {}
        self.inserted = []
        with self._transaction() as cur:
            self._delete(cur, list(acked))
            last = self._insert(cur, pending)
            used = sum(b for _, b in self._totals.values())
            if used > self.max_bytes:
                reserve = REPORT_RESERVE if reporter is not None else 0
                evicted = self._evict(cur, used - self.max_bytes + reserve, protect)
                if evicted and reporter is not None:
                    self._insert(cur, reporter("evicted", evicted))
        if not evicted:
            # the rows just inserted, as `peek` would read them: within one transaction
            # of the only writer, AUTOINCREMENT numbers them one after the other
            first = last - len(pending) + 1
            self.inserted = [
                Message(first + i, p.id, p.priority, p.topic, p.stream, p.body, p.count, p.raw)
                for i, p in enumerate(pending)
            ]
        for name, n in evicted.items():
            self.stats.evicted[name] += n
        self.stats.accepted += sum(p.count for p in pending)
        self._publish_stats()
        return evicted

    def _delete(self, cur: sqlite3.Cursor, seqs: Sequence[int]) -> None:
        for start in range(0, len(seqs), 500):
            chunk = seqs[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for prio, size in cur.execute(
                f"DELETE FROM messages WHERE seq IN ({marks}) RETURNING priority, size",  # noqa: S608 - only placeholders
                chunk,
            ).fetchall():
                self._count(prio, -1, -size)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction: committed if the block succeeds, rolled back if not
        (and the running totals with it)."""
        before = {prio: list(t) for prio, t in self._totals.items()}
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            self._totals = before
            raise
        cur.execute("COMMIT")

    def _insert(self, cur: sqlite3.Cursor, pending: Sequence[_Pending]) -> int:
        """Store `pending`; returns the seq of the last row inserted."""
        for p in pending:
            self._count(p.priority, 1, len(p.body) + ROW_OVERHEAD)
        cur.executemany(
            "INSERT INTO messages (id, priority, topic, stream, body, count, size, created, raw)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    p.id,
                    int(p.priority),
                    p.topic,
                    p.stream,
                    p.body,
                    p.count,
                    len(p.body) + ROW_OVERHEAD,
                    p.created,
                    int(p.raw),
                )
                for p in pending
            ],
        )
        last: int = cur.execute("SELECT last_insert_rowid()").fetchone()[0]
        return last

    def _evict(self, cur: sqlite3.Cursor, excess: int, protect: Collection[int]) -> dict[str, int]:
        """Delete the oldest messages of the lowest classes until `excess` bytes are freed."""
        evicted: dict[str, int] = {}
        freed = 0
        for prio in sorted(Priority, reverse=True):
            after = 0
            while freed < excess:
                rows = cur.execute(
                    "SELECT seq, size, count FROM messages WHERE priority = ? AND seq > ?"
                    " ORDER BY seq LIMIT 500",
                    (int(prio), after),
                ).fetchall()
                if not rows:
                    break
                victims = []
                for seq, size, count in rows:
                    after = seq
                    if seq in protect:
                        continue
                    victims.append((seq,))
                    freed += size
                    self._count(prio, -1, -size)
                    name = prio.name.lower()
                    evicted[name] = evicted.get(name, 0) + count
                    if freed >= excess:
                        break
                cur.executemany("DELETE FROM messages WHERE seq = ?", victims)
        return evicted

    def expire(self, now: float, reporter: Reporter | None = None) -> dict[str, int]:
        """Delete messages older than their class's time to live (and store the report)."""
        expired: dict[str, int] = {}
        with self._transaction() as cur:
            for prio, ttl in self.ttl.items():
                cur.execute(
                    "DELETE FROM messages WHERE priority = ? AND created < ? RETURNING count, size",
                    (int(prio), now - ttl),
                )
                rows = cur.fetchall()
                n = sum(row[0] for row in rows)
                if rows:
                    self._count(prio, -len(rows), -sum(row[1] for row in rows))
                if n:
                    expired[prio.name.lower()] = n
            if expired and reporter is not None:
                self._insert(cur, reporter("expired", expired))
        for name, n in expired.items():
            self.stats.expired[name] += n
        self._publish_stats()
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return expired

    def peek(
        self, limit: int, exclude: Collection[int], after: dict[Priority, int] | None = None
    ) -> list[Message]:
        """The next `limit` messages to send (by priority, then sequence), skipping
        `exclude` (in flight or acknowledged but not yet deleted) and, per class, every
        message up to `after[class]` (those already handed out): each class is read from
        where its last hand-out ended, along the index, so the cost does not grow with the
        acknowledgements waiting to be deleted or with the backlog."""
        out: list[Message] = []
        for prio in Priority:  # ALARM first
            start = after.get(prio, 0) if after else 0
            while len(out) < limit:
                want = limit - len(out)
                rows = self.db.execute(
                    "SELECT seq, id, topic, stream, body, count, raw FROM messages"
                    " WHERE priority = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (int(prio), start, want),
                ).fetchall()
                for seq, mid, topic, stream, body, count, raw in rows:
                    start = seq
                    if seq not in exclude:
                        out.append(
                            Message(seq, mid, prio, topic, stream, bytes(body), count, bool(raw))
                        )
                if len(rows) < want:
                    break  # this class is exhausted
            if len(out) >= limit:
                break
        return out

    def close(self) -> None:
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self.db.close()


class Outbox:
    """The outbox as the gateway uses it: a bus consumer (the writer component) and a
    source of messages for the uplink. All SQLite calls run on its own thread."""

    name = "outbox"

    def __init__(
        self,
        path: Path,
        *,
        node: str,
        bus: Bus,
        max_bytes: int = 256 * 1024 * 1024,
        commit_interval: float = 0.2,
        batch_max: int = 100,
        fsync: Literal["full", "normal"] = "full",
        ttl: dict[Priority, float] | None = None,
        queue_size: int = 10_000,
        maintenance_interval: float = 60.0,
        ack_interval: float = 1.0,
        telemetry_format: TelemetryFormat = 2,
    ) -> None:
        self.path = path
        # Deleting acknowledged messages is not urgent (a crash before it means a QoS 1
        # redelivery with the same id, which receivers handle): deletions wait up to this
        # long for records to share their commit, halving the commits of a steady flow.
        self.ack_interval = ack_interval
        self.node = node
        self.bus = bus
        self.max_bytes = max_bytes
        self.commit_interval = commit_interval
        self.batch_max = batch_max
        self.fsync = fsync
        self.ttl = ttl
        self.queue_size = queue_size
        self.telemetry_format = telemetry_format
        self.maintenance_interval = maintenance_interval
        self.store: OutboxStore | None = None
        self.available = asyncio.Event()
        self.committed = asyncio.Event()  # pulses after each commit (for waiting in tests)
        self.locate: Callable[[], dict[str, Any] | None] | None = None
        self.snapshots: SnapshotStore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._acked: set[int] = set()  # acknowledged, deletion not yet committed
        self._deleting: set[int] = set()  # deletion being committed right now
        self._inflight: set[int] = set()
        # per class, the highest seq handed to the uplink (where the next peek starts)
        self._handed: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self._ahead: deque[Message] = deque()  # read from the file, not yet handed out
        # the last read found every class exhausted, and every message committed since is
        # in _ahead: a commit then hands its messages over from memory, not via the file
        self._caught_up = False
        self._ack_wake = Wake()

    @property
    def stats(self) -> OutboxStats:
        return self.store.stats if self.store else OutboxStats()

    async def _call(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise RuntimeError("outbox is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open_store(self) -> OutboxStore:
        if self.store is None:
            raise RuntimeError("outbox is not open")
        return self.store

    async def run(self, ready: Ready) -> None:
        """Writer component: bus -> SQLite, until cancelled; drains the queue on stop."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        sub = self.bus.subscribe(
            "outbox",
            maxsize=self.queue_size,
            policy=DropPolicy.BACKPRESSURE,
            max_wait=5.0,
            urgent=_not_telemetry,  # events and alarms do not wait for the telemetry's batch
        )
        try:
            store: OutboxStore = await self._call(
                lambda: OutboxStore(
                    self.path, max_bytes=self.max_bytes, fsync=self.fsync, ttl=self.ttl
                )
            )
            self.store = store
            logger.info(
                "outbox %s open: %d message(s) waiting, %d bytes",
                self.path,
                store.stats.messages,
                store.stats.bytes,
            )
            if store.stats.messages:
                self.available.set()
            ready()
            await self._maintain()
            next_maintenance = time.monotonic() + self.maintenance_interval
            while True:
                batch = await sub.get_batch(
                    self.batch_max * 10, self.commit_interval, wake=self._ack_wake
                )
                if not batch:
                    # only acknowledgements: wait for records to commit them with, for at
                    # most `ack_interval`
                    batch = await self._records_or_timeout(sub)
                self._ack_wake.clear()
                await self._commit(batch)
                if time.monotonic() >= next_maintenance:
                    await self._maintain()
                    next_maintenance = time.monotonic() + self.maintenance_interval
        finally:
            sub.close()
            try:
                await self._shutdown(sub)
            finally:
                self._executor.shutdown(wait=True)
                self._executor = None

    async def _records_or_timeout(self, sub: Any) -> list[Record]:
        timer = Wake()
        handle = asyncio.get_running_loop().call_later(self.ack_interval, timer.set)
        try:
            batch: list[Record] = await sub.get_batch(
                self.batch_max * 10, self.commit_interval, wake=timer
            )
        finally:
            handle.cancel()
        return batch

    async def _shutdown(self, sub: Any) -> None:
        """Commit what is still queued and close the file (runs during cancellation)."""
        if self.store is None:
            return
        rest: list[Record] = []
        while (record := sub.get_nowait()) is not None:
            rest.append(record)
        try:
            await self._commit(rest)
        finally:
            store, self.store = self.store, None
            await self._call(store.close)
            self.available.clear()
            self._inflight.clear()
            self._handed = dict.fromkeys(Priority, 0)
            self._ahead.clear()
            self._caught_up = False
            logger.info("outbox closed")

    async def _commit(self, records: Sequence[Record]) -> None:
        acked = self._acked
        if not records and not acked:
            return
        store = self._open_store()
        self._acked = set()
        self._deleting = acked
        pending = pack(
            records,
            self.node,
            self.batch_max,
            time.time(),
            locate=self.locate,
            snapshots=self.snapshots,
            telemetry_format=self.telemetry_format,
        )
        try:
            await self._call(
                functools.partial(
                    store.commit,
                    pending,
                    acked,
                    protect=frozenset(self._inflight) | {m.seq for m in self._ahead},
                    reporter=self._report_dropped,
                )
            )
        except BaseException:
            # nothing was committed: the acks stay pending for the next commit
            self._acked |= acked
            raise
        finally:
            self._deleting = set()
        if self._ahead and any(p.priority < self._ahead[-1].priority for p in pending):
            self._rewind()  # something more urgent came in: it goes before what was read
        elif self._caught_up and pending:
            self._hand_over(store.inserted)
        if pending or store.stats.messages:
            self.available.set()
        self.committed.set()
        self.committed.clear()

    def _hand_over(self, inserted: list[Message]) -> None:
        """Put what a commit stored straight into the read-ahead: what the next read of
        the file would return, without the trip to its thread. Not when the commit
        evicted (its report and its victims are read from the file), nor past a bound
        (while the uplink is away the messages wait in the file, not in memory)."""
        if not inserted or len(self._ahead) + len(inserted) > 4 * READ_AHEAD:
            self._caught_up = False
            return
        for m in sorted(inserted, key=lambda m: (m.priority, m.seq)):
            self._ahead.append(m)
            self._handed[m.priority] = max(self._handed[m.priority], m.seq)

    async def _maintain(self) -> None:
        self._caught_up = False  # an expiry report may be stored: read the file again
        await self._call(self._open_store().expire, time.time(), self._report_dropped)
        self.available.set()

    def _report_dropped(self, why: str, counts: dict[str, int]) -> list[_Pending]:
        """The `outbox.dropped` event for `counts` (called inside the store's transaction)."""
        total = sum(counts.values())
        logger.warning(
            "outbox %s %d record(s) (%s)",
            why,
            total,
            ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        )
        event = Event(
            kind="outbox.dropped",
            source="outbox",
            severity=Severity.WARNING,
            message=f"{why} {total} record(s): the outbox was full or records were too old",
            data={"reason": why, "records": dict(counts), "max_bytes": self.max_bytes},
            node=self.node,
        )
        return pack([event], self.node, 1, time.time())

    # --- the uplink's side -------------------------------------------------------------

    async def next_messages(self, limit: int) -> list[Message]:
        """Wait until messages are waiting to be sent, then return up to `limit`, marked
        in flight. Call `ack` or `release` for each."""
        while True:
            if self.store is not None and self._executor is not None:
                if not self._ahead:
                    self.available.clear()
                if not self._ahead and not self._caught_up:
                    # (caught up, everything stored is handed out: the next commit hands
                    # its own messages over)
                    exclude = self._inflight | self._acked | self._deleting
                    after = dict(self._handed)
                    # read ahead: one trip to the outbox's thread serves many calls (a
                    # slot freed by one PUBACK asks for one message)
                    want = max(limit, READ_AHEAD)
                    fetched: list[Message] = await self._call(self.store.peek, want, exclude, after)
                    # acks may have arrived while the thread worked
                    gone = self._inflight | self._acked | self._deleting
                    self._ahead.extend(m for m in fetched if m.seq not in gone)
                    for m in fetched:
                        self._handed[m.priority] = max(self._handed[m.priority], m.seq)
                    # fewer than asked: every class is exhausted. A commit that ran on
                    # the thread before this read is in it (and found _caught_up false);
                    # one after it resumes after this and is handed over
                    self._caught_up = len(fetched) < want
                if self._ahead:
                    msgs = [self._ahead.popleft() for _ in range(min(limit, len(self._ahead)))]
                    self._inflight.update(m.seq for m in msgs)
                    return msgs
            await self.available.wait()

    def _rewind(self) -> None:
        """Forget what was read ahead (it is read again, after anything more urgent)."""
        self._caught_up = False
        for m in self._ahead:
            self._handed[m.priority] = min(self._handed[m.priority], m.seq - 1)
        self._ahead.clear()

    def ack(self, msg: Message) -> None:
        """The broker acknowledged `msg`: delete it with the next commit."""
        self._inflight.discard(msg.seq)
        self._acked.add(msg.seq)
        self._ack_wake.set()
        if self.store is not None:
            self.store.stats.sent += 1
            self.store.stats.delivered += msg.count

    def release(self, msgs: Iterable[Message]) -> None:
        """`msgs` were not acknowledged (connection lost): send them again later."""
        self._rewind()  # what was read ahead goes after these, as before
        for msg in msgs:
            self._inflight.discard(msg.seq)
            # read this class again from before it
            self._handed[msg.priority] = min(self._handed[msg.priority], msg.seq - 1)
        self.available.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)
