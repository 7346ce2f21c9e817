"""Resources several drivers use at once (one serial line, many slaves), refcounted.

The node keeps one `SharedResources` for all its drivers and gives it to them through
`DriverContext.shared`; the conformance kit uses its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

T = TypeVar("T")


@dataclass
class _Shared:
    resource: Any
    users: int


class SharedResources:
    """Resources several drivers use at once (one serial line, many slaves), refcounted."""

    def __init__(self) -> None:
        self._items: dict[str, _Shared] = {}
        self._lock = asyncio.Lock()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    @contextlib.asynccontextmanager
    async def use(self, key: str, factory: Callable[[], Awaitable[T]]) -> AsyncIterator[T]:
        async with self._lock:
            item = self._items.get(key)
            if item is None:
                item = _Shared(await factory(), 0)
                self._items[key] = item
            item.users += 1
        try:
            yield cast(T, item.resource)
        finally:
            item.users -= 1
            if item.users == 0 and self._items.get(key) is item:
                del self._items[key]
                close = getattr(item.resource, "aclose", None)
                if close is not None:
                    result = close()
                    if inspect.isawaitable(result):
                        await result
