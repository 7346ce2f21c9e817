"""Recent JPEG snapshots, by id, until the outbox takes them (bounded in bytes)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class SnapshotStore:
    """Oldest snapshots are dropped (and counted) when `max_bytes` would be exceeded."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.dropped = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        # called with (id, jpeg) on every put: a consumer that needs a picture later (the
        # road inspection keeps the best one of a pass) takes its own reference here
        self.listeners: list[Callable[[str, bytes], None]] = []

    def put(self, snapshot_id: str, jpeg: bytes) -> None:
        if snapshot_id in self._items or len(jpeg) > self.max_bytes:
            return
        for listener in self.listeners:
            listener(snapshot_id, jpeg)
        self._items[snapshot_id] = jpeg
        self.bytes += len(jpeg)
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= len(old)
            self.dropped += 1

    def take(self, snapshot_id: str) -> bytes | None:
        """The snapshot, removed from the store (each is sent once)."""
        jpeg = self._items.pop(snapshot_id, None)
        if jpeg is not None:
            self.bytes -= len(jpeg)
        return jpeg

    def __len__(self) -> int:
        return len(self._items)
