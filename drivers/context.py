"""What every `DriverContext` has in common: identity, logger, clock, readings, sharing.

The node's context (gateway/devices.py) and the conformance kit's recording context
build on this; a driver sees only the `DriverContext` protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TypeVar

from drivers.api import Clock, DriverContext, PointValue, Quality, Reading, Value
from drivers.sharing import SharedResources
from gateway.kernel.records import BLOCK_IDS, ReadingBatch

T = TypeVar("T")


class ContextBase(DriverContext):
    """The parts of a driver context that do not depend on where the driver runs."""

    def __init__(
        self,
        *,
        node_id: str,
        device_id: str,
        driver_type: str,
        clock: Clock,
        shared: SharedResources,
    ) -> None:
        self._node_id = node_id
        self._device_id = device_id
        self._clock = clock
        self._shared = shared
        self._logger = logging.getLogger(f"drivers.{driver_type}.{device_id}")

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def device_id(self) -> str:
        return self._device_id

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def pace(self) -> float:
        return 1.0

    def reading(
        self,
        point: str,
        value: Value,
        *,
        unit: str | None = None,
        quality: Quality = Quality.GOOD,
        ts: datetime | None = None,
    ) -> Reading:
        return Reading(
            device=self._device_id,
            point=point,
            value=value,
            unit=unit,
            quality=quality,
            ts=ts or self._clock.now(),
            node=self._node_id,
        )

    def batches(
        self, values: Sequence[PointValue], ts: datetime | None = None
    ) -> list[ReadingBatch]:
        """`values` of this device as reading batches (of at most 1024 each: one id block)."""
        when = ts or self._clock.now()
        out = []
        for start in range(0, len(values), BLOCK_IDS):
            chunk = values[start : start + BLOCK_IDS]
            points, vals, units, qualities = zip(*chunk, strict=True)
            out.append(
                ReadingBatch(
                    device=self._device_id,
                    points=points,
                    values=vals,
                    units=units,
                    qualities=qualities,
                    ts=when,
                    node=self._node_id,
                )
            )
        return out

    def shared(
        self, key: str, factory: Callable[[], Awaitable[T]]
    ) -> AbstractAsyncContextManager[T]:
        return self._shared.use(key, factory)
