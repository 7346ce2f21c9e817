"""Small drivers and components used to exercise the gateway core in tests."""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field

from drivers.api import Driver, DriverConfig, DriverContext
from gateway.kernel.component import Ready
from gateway.kernel.durations import Duration


class CounterConfig(DriverConfig):
    type: Literal["counter"]
    interval: Duration = Field(default=0.01, gt=0, description="Time between readings.")
    unit: str = Field(default="1", description="Unit of the count.")
    limit: int | None = Field(default=None, description="Stop after this many readings.")


class CounterDriver(Driver):
    """Publishes an increasing count on point `count` every `interval` seconds."""

    type = "counter"
    config_model = CounterConfig

    async def run(self, ctx: DriverContext) -> None:
        assert isinstance(self.config, CounterConfig)
        n = 0
        ctx.set_online(True)
        while self.config.limit is None or n < self.config.limit:
            await ctx.publish(ctx.reading("count", n, unit=self.config.unit))
            n += 1
            await ctx.clock.sleep(self.config.interval)


class GaugeConfig(DriverConfig):
    type: Literal["gauge"]
    level: float = Field(ge=0, description="Constant level reported.")


class GaugeDriver(Driver):
    type = "gauge"
    config_model = GaugeConfig

    async def run(self, ctx: DriverContext) -> None:
        assert isinstance(self.config, GaugeConfig)
        await ctx.publish(ctx.reading("level", self.config.level, unit="m"))
        await asyncio.Event().wait()


class Recorder:
    """A component that records when it started and stopped, in a shared journal."""

    def __init__(self, name: str, journal: list[str], *, fail_times: int = 0) -> None:
        self._name = name
        self.journal = journal
        self.fail_times = fail_times
        self.runs = 0

    @property
    def name(self) -> str:
        return self._name

    async def run(self, ready: Ready) -> None:
        self.runs += 1
        if self.runs <= self.fail_times:
            raise RuntimeError(f"{self._name} failure {self.runs}")
        self.journal.append(f"start {self._name}")
        ready()
        try:
            await asyncio.Event().wait()
        finally:
            self.journal.append(f"stop {self._name}")
