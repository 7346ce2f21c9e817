"""The serial driver: text lines, NMEA and binary frames from devices on serial ports.

A port that vanishes (adapter unplugged) or cannot be opened is retried with jittered
backoff until it comes back; a device that stays silent, or sends only data that does not
parse (wrong baud rate, noise), is reported offline. Each change is reported once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Literal

import serial
import serial_asyncio_fast
from pydantic import Field

from drivers.api import (
    ConfigFileError,
    Driver,
    DriverConfig,
    DriverContext,
    Duration,
    ProfileRef,
    Quality,
    backoff,
)
from drivers.report import ReportConfig, Reporter
from drivers.serial.framing import BinaryFramer, LineFramer
from drivers.serial.parser import FrameParser, Rejected
from drivers.serial.profile import (
    BinaryFraming,
    SerialProfile,
    SerialProfileError,
    load_serial_profile,
)


class SerialConfig(DriverConfig):
    """A device on a serial port, described by a serial profile."""

    type: Literal["serial"] = Field(description="Driver type.")
    profile: ProfileRef = Field(
        description="Shipped serial profile (nmea_gps, rain_gauge, weather_csv, pms5003) "
        "or a path to your own."
    )
    port: str = Field(description="Serial port; prefer stable names such as /dev/serial/by-id/...")
    baudrate: int = Field(default=9600, gt=0, description="Line speed in bit/s.")
    bytesize: Literal[7, 8] = Field(default=8, description="Data bits.")
    parity: Literal["N", "E", "O"] = Field(default="N", description="Parity.")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits.")
    silence_timeout: Duration = Field(
        default=10.0,
        gt=0,
        description="Without a valid frame for this long the device is reported offline.",
    )
    reconnect_max: Duration = Field(
        default=30.0, gt=0, description="Longest wait between attempts to reopen the port."
    )
    report: ReportConfig = Field(default_factory=ReportConfig, description="When to report.")

    def load_files(self) -> None:
        try:
            load_serial_profile(self.profile)
        except SerialProfileError as exc:
            raise ConfigFileError("profile", str(exc)) from None


def make_framer(profile: SerialProfile) -> LineFramer | BinaryFramer:
    framing = profile.framing
    if isinstance(framing, BinaryFraming):
        return BinaryFramer(
            start=bytes.fromhex(framing.start),
            length_offset=framing.length.offset,
            length_size=framing.length.size,
            length_endian=framing.length.endian,
            length_adjust=framing.length.adjust,
            crc=framing.crc,
            crc_endian=framing.crc_endian,
            max_length=framing.max_length,
        )
    return LineFramer(max_length=framing.max_length)


class SerialDriver(Driver):
    """Reads one serial device."""

    type = "serial"
    config_model = SerialConfig

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        if not isinstance(config, SerialConfig):
            raise TypeError("SerialDriver needs a SerialConfig")
        self.cfg = config
        self.profile = load_serial_profile(config.profile)
        self.parser = FrameParser(self.profile)
        self.framer = make_framer(self.profile)
        self.rejected: Counter[str] = Counter()
        self.frames = 0
        self.opens = 0
        self.online: bool | None = None
        self._reporter = Reporter(config.report)

    # --- connection -------------------------------------------------------------------

    async def run(self, ctx: DriverContext) -> None:
        attempt = 0
        while True:
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=self.cfg.port,
                    baudrate=self.cfg.baudrate,
                    bytesize=self.cfg.bytesize,
                    parity=self.cfg.parity,
                    stopbits=self.cfg.stopbits,
                )
            except (OSError, serial.SerialException) as exc:
                self._offline(ctx, f"cannot open {self.cfg.port}: {_why(exc)}")
            else:
                self.opens += 1
                attempt = 0
                self.framer = make_framer(self.profile)  # no half frame survives a reopen
                try:
                    await self._read(ctx, reader)
                    reason = f"{self.cfg.port} closed"
                except (OSError, serial.SerialException) as exc:
                    reason = f"{self.cfg.port} lost: {_why(exc)}"
                finally:
                    writer.close()
                self._offline(ctx, reason)
            attempt += 1
            await ctx.clock.sleep(backoff(attempt, first=0.5, cap=self.cfg.reconnect_max))

    async def _read(self, ctx: DriverContext, reader: asyncio.StreamReader) -> None:
        """Read until the port closes; report silence and garbage as offline."""
        clock = ctx.clock
        deadline = clock.monotonic() + self.cfg.silence_timeout
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - clock.monotonic())):
                    data = await reader.read(4096)
            except TimeoutError:
                garbage = self.framer.stats.discarded + sum(self.rejected.values())
                self._offline(
                    ctx,
                    f"no valid data for {self.cfg.silence_timeout:g}s"
                    + (
                        " (receiving data that does not parse: baud rate? wiring?)"
                        if garbage
                        else ""
                    ),
                )
                deadline = clock.monotonic() + self.cfg.silence_timeout
                continue
            if not data:
                return
            for frame in self.framer.feed(data):
                values = self.parser.parse(frame)
                if isinstance(values, Rejected):
                    self.rejected[values.reason] += 1
                    ctx.logger.debug(
                        "rejected frame (%s %s): %r", values.reason, values.detail, frame[:80]
                    )
                    continue
                self.frames += 1
                deadline = clock.monotonic() + self.cfg.silence_timeout
                self._online(ctx)
                now = clock.monotonic()
                for name, value in values.items():
                    point = self.parser.points[name]
                    if self._reporter.due(name, value, Quality.GOOD, now, point.deadband):
                        await ctx.publish(ctx.reading(name, value, unit=point.unit))

    def _online(self, ctx: DriverContext) -> None:
        if self.online is not True:
            self.online = True
            ctx.set_online(True)

    def _offline(self, ctx: DriverContext, reason: str) -> None:
        if self.online is not False:
            self.online = False
            ctx.set_online(False, reason)
        else:
            ctx.logger.debug("%s still offline: %s", self.device_id, reason)


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
