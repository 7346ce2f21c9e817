"""Simulated serial devices writing to the device end of a pseudo-terminal pair.

A GPS receiver driving a route through a city grid (NMEA GGA, RMC and VTG at 1-10 Hz), a
rain gauge (ASCII lines) and a PMS5003 particle sensor (binary frames). Each can be told to
misbehave: `garbage(n)` sprays n random bytes, `break_checksums(n)` and `truncate(n)` spoil
the next n frames, `silent` stops the output, `wrong_baud` mangles every byte the way a
receiver set to the wrong speed sees it.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import serial_asyncio_fast

from drivers.serial import nmea
from drivers.serial.framing import checksum

EARTH_M_PER_DEG = 111_320.0


@dataclass
class CityRoute:
    """A closed loop through a street grid (blocks of `block_m`), driven at `speed_kmh`.

    Deterministic: the same seed gives the same route. The default grid lies over central
    Porto Alegre, Brazil.
    """

    origin: tuple[float, float] = (-30.0346, -51.2177)
    block_m: float = 120.0
    blocks: int = 5
    speed_kmh: float = 30.0
    seed: int = 1
    _points: list[tuple[float, float]] = field(default_factory=list, init=False)
    _legs: list[float] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        x = y = 0
        corners = [(0, 0)]
        # a random walk along the grid that returns home: out along streets, back again
        for _ in range(6):
            if rng.random() < 0.5:
                x = min(self.blocks, max(0, x + rng.choice((-2, -1, 1, 2))))
            else:
                y = min(self.blocks, max(0, y + rng.choice((-2, -1, 1, 2))))
            if (x, y) != corners[-1]:
                corners.append((x, y))
        corners += [(0, y), (0, 0)] if (0, y) != corners[-1] else [(0, 0)]
        self._points = [(cx * self.block_m, cy * self.block_m) for cx, cy in corners]
        self._legs = [math.dist(a, b) for a, b in zip(self._points, self._points[1:], strict=False)]

    @property
    def length_m(self) -> float:
        return sum(self._legs)

    def at(self, t: float) -> tuple[float, float, float, float]:
        """(lat, lon, heading degrees, speed km/h) at `t` seconds."""
        distance = (t * self.speed_kmh / 3.6) % max(self.length_m, 1e-9)
        for (a, b), leg in zip(
            zip(self._points, self._points[1:], strict=False), self._legs, strict=True
        ):
            if distance <= leg and leg > 0:
                f = distance / leg
                east = a[0] + (b[0] - a[0]) * f
                north = a[1] + (b[1] - a[1]) * f
                heading = math.degrees(math.atan2(b[0] - a[0], b[1] - a[1])) % 360
                lat = self.origin[0] + north / EARTH_M_PER_DEG
                lon = self.origin[1] + east / (EARTH_M_PER_DEG * math.cos(math.radians(lat)))
                return lat, lon, heading, self.speed_kmh
            distance -= leg
        return self.origin[0], self.origin[1], 0.0, 0.0


def _ddmm(value: float, lat: bool) -> tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60
    width = 2 if lat else 3
    return f"{degrees:0{width}d}{minutes:07.4f}", hemi


def gps_sentences(
    lat: float, lon: float, *, heading: float, speed_kmh: float, when: datetime, sats: int = 9
) -> list[bytes]:
    """GGA, RMC and VTG sentences for one fix."""
    hhmmss = when.strftime("%H%M%S") + f".{when.microsecond // 10000:02d}"
    lat_s, ns = _ddmm(lat, lat=True)
    lon_s, ew = _ddmm(lon, lat=False)
    knots = speed_kmh / 1.852
    return [
        nmea.sentence(f"GPGGA,{hhmmss},{lat_s},{ns},{lon_s},{ew},1,{sats:02d},0.9,31.5,M,4.1,M,,"),
        nmea.sentence(
            f"GPRMC,{hhmmss},A,{lat_s},{ns},{lon_s},{ew},{knots:.2f},{heading:.1f},"
            f"{when.strftime('%d%m%y')},,,A"
        ),
        nmea.sentence(f"GPVTG,{heading:.1f},T,,M,{knots:.2f},N,{speed_kmh:.2f},K,A"),
    ]


class SerialSim:
    """Base of simulated serial devices: the output loop and the fault injection."""

    def __init__(self, port: str, *, rate_hz: float, seed: int = 1) -> None:
        self.port = port
        self.interval = 1.0 / rate_hz
        self.rng = random.Random(seed)
        self.silent = False
        self.wrong_baud = False
        self.sent_frames = 0
        self._garbage = 0
        self._broken = 0
        self._truncated = 0
        self._t0: float | None = None

    def garbage(self, n: int = 64) -> None:
        """Send `n` random bytes before the next frame."""
        self._garbage += n

    def break_checksums(self, n: int = 1) -> None:
        """Spoil the integrity check of the next `n` frames."""
        self._broken += n

    def truncate(self, n: int = 1) -> None:
        """Cut the next `n` frames short (the rest never arrives)."""
        self._truncated += n

    def frames(self, t: float) -> list[bytes]:
        """The frames to send at time `t` (seconds since start)."""
        raise NotImplementedError

    def spoil(self, frame: bytes) -> bytes:
        """`frame` with a wrong integrity check (subclasses know where it is)."""
        return frame[:-3] + bytes([frame[-3] ^ 0x01]) + frame[-2:]

    async def run(self, *, epoch: float | None = None) -> None:
        """Write to the port until cancelled; the device's time counts from `epoch` (the
        event loop's clock, i.e. time.monotonic(); default: now), so that it can run in
        step with another simulation, such as a video of the same drive."""
        _, writer = await serial_asyncio_fast.open_serial_connection(url=self.port, baudrate=115200)
        loop = asyncio.get_running_loop()
        self._t0 = loop.time() if epoch is None else epoch
        try:
            while True:
                if not self.silent:
                    writer.write(self._output(loop.time() - self._t0))
                    await writer.drain()
                await asyncio.sleep(self.interval)
        finally:
            writer.close()

    def _output(self, t: float) -> bytes:
        out = b""
        if self._garbage:
            out += bytes(self.rng.randrange(256) for _ in range(self._garbage))
            self._garbage = 0
        for original in self.frames(t):
            frame = original
            if self._broken:
                self._broken -= 1
                frame = self.spoil(frame)
            if self._truncated:
                self._truncated -= 1
                frame = frame[: max(1, len(frame) // 2)]
            self.sent_frames += 1
            out += frame
        if self.wrong_baud:
            # a receiver at the wrong speed samples bits at the wrong times: every byte
            # arrives as some other byte, and now and then a byte is lost or doubled
            mangled = bytearray()
            for byte in out:
                r = self.rng.random()
                if r < 0.05:
                    continue
                mangled.append(((byte << 1) | (byte >> 7)) & 0xFF ^ 0x55)
                if r > 0.95:
                    mangled.append(self.rng.randrange(256))
            out = bytes(mangled)
        return out


class Route(Protocol):
    def at(self, t: float) -> tuple[float, float, float, float]:
        """(lat, lon, heading degrees, speed km/h) at `t` seconds."""
        ...


class GpsReceiver(SerialSim):
    """A GPS receiver on a vehicle driving `route`."""

    def __init__(
        self,
        port: str,
        *,
        route: Route | None = None,
        rate_hz: float = 5.0,
        seed: int = 1,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__(port, rate_hz=rate_hz, seed=seed)
        self.route: Route = route or CityRoute(seed=seed)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.last_fix: tuple[float, float, float, float] | None = None

    def spoil(self, frame: bytes) -> bytes:
        star = frame.rindex(b"*")
        wrong = int(frame[star + 1 : star + 3], 16) ^ 0xFF
        return frame[: star + 1] + b"%02X" % wrong + frame[star + 3 :]

    def frames(self, t: float) -> list[bytes]:
        self.last_fix = self.route.at(t)
        lat, lon, heading, speed = self.last_fix
        return gps_sentences(lat, lon, heading=heading, speed_kmh=speed, when=self.clock())


class RainGauge(SerialSim):
    """A rain gauge: one line a second, rain during [storm_from, storm_until)."""

    def __init__(
        self,
        port: str,
        *,
        rate_hz: float = 1.0,
        storm: tuple[float, float] = (5, 60),
        seed: int = 1,
    ) -> None:
        super().__init__(port, rate_hz=rate_hz, seed=seed)
        self.storm = storm
        self.total = 0.0

    def frames(self, t: float) -> list[bytes]:
        raining = self.storm[0] <= t < self.storm[1]
        rate = 12.0 + 4 * math.sin(t / 5) if raining else 0.0
        self.total += rate * self.interval / 3600
        temp = 14.0 + math.sin(t / 30)
        return [f"RAIN,total={self.total:.2f},rate={rate:.2f},temp={temp:.1f}\r\n".encode()]

    def spoil(self, frame: bytes) -> bytes:
        # text lines have no checksum: a flipped digit is what noise does to them
        return frame.replace(b"RAIN", b"RA1N", 1)


class Pms5003(SerialSim):
    """A PMS5003 particle sensor: 32-byte frames with a 16-bit byte sum."""

    def __init__(self, port: str, *, rate_hz: float = 1.0, seed: int = 1) -> None:
        super().__init__(port, rate_hz=rate_hz, seed=seed)

    def frames(self, t: float) -> list[bytes]:
        pm25 = 20 + int(8 * math.sin(t / 7))
        words = [pm25 // 2, pm25, pm25 + 10, pm25 // 2, pm25, pm25 + 10] + [0] * 7
        body = b"\x42\x4d" + struct.pack(">H", 28) + struct.pack(">13H", *words)
        return [body + struct.pack(">H", checksum("sum16", body))]

    def spoil(self, frame: bytes) -> bytes:
        return frame[:-1] + bytes([frame[-1] ^ 0xFF])
