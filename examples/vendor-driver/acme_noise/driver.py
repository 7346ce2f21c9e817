"""The driver: ask the meter for a measurement every `interval`, publish what it says."""

from __future__ import annotations

import asyncio
import math
from typing import Any, Literal

from pydantic import Field

from drivers.api import Driver, DriverConfig, DriverContext, Duration, WriteError

UNITS = {"LAeq": "dBA", "LAmax": "dBA"}


class AcmeSlmConfig(DriverConfig):
    """An ACME SLM-100 reachable over TCP."""

    type: Literal["acme_slm"] = Field(description="Driver type.")
    host: str = Field(description="Address of the meter.")
    port: int = Field(default=4001, ge=1, le=65535, description="TCP port of the meter.")
    interval: Duration = Field(default=1.0, gt=0, description="Time between measurements.")
    timeout: Duration = Field(default=2.0, gt=0, description="Time to wait for an answer.")


class AcmeSlmDriver(Driver):
    """Polls one meter. A meter that is unreachable or silent is reported offline."""

    type = "acme_slm"
    config_model = AcmeSlmConfig
    api_version = "2.0"

    async def run(self, ctx: DriverContext) -> None:
        cfg = self.config
        assert isinstance(cfg, AcmeSlmConfig)
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(cfg.host, cfg.port), cfg.timeout
                )
            except (OSError, TimeoutError) as exc:
                ctx.set_online(False, f"cannot connect to {cfg.host}:{cfg.port}: {exc}")
                await ctx.clock.sleep(min(30.0, cfg.interval * 5))
                continue
            try:
                await self._poll(ctx, reader, writer)
            except (OSError, TimeoutError, ValueError) as exc:
                ctx.set_online(False, f"meter stopped answering: {exc}")
            finally:
                writer.close()
            await ctx.clock.sleep(cfg.interval)

    async def _poll(
        self, ctx: DriverContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        cfg = self.config
        assert isinstance(cfg, AcmeSlmConfig)
        while True:
            writer.write(b"MEAS?\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), cfg.timeout)
            if not line:
                raise ValueError("connection closed")
            values = parse(line.decode("ascii", errors="replace"))
            ctx.set_online(True)
            for name, value in values.items():
                await ctx.publish(ctx.reading(name, value, unit=UNITS.get(name)))
            await ctx.clock.sleep(cfg.interval)

    async def write(self, point: str, value: Any) -> None:
        raise WriteError(self.device_id, point, "the SLM-100 has no writable settings")


def parse(line: str) -> dict[str, float | str]:
    """`LAeq=54.3;LAmax=61.2;STATUS=OK` -> values; raises ValueError on anything else."""
    out: dict[str, float | str] = {}
    for part in line.strip().split(";"):
        key, sep, raw = part.partition("=")
        if not sep:
            raise ValueError(f"malformed answer {line!r}")
        if key == "STATUS":
            out["status"] = raw
            continue
        if key not in UNITS:
            raise ValueError(f"unknown field {key!r}")
        value = float(raw)
        if not math.isfinite(value) or not 0 <= value <= 200:
            raise ValueError(f"{key}={raw} is not a sound level")
        out[key] = value
    return out
