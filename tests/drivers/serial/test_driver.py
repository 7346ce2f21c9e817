"""The serial driver over real pseudo-terminal pairs, against the simulated devices."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from drivers.serial.driver import SerialConfig, SerialDriver
from drivers.serial.framing import crc16_modbus
from firmware_sim.pty import PtyPair
from firmware_sim.serial_devices import GpsReceiver, Pms5003, RainGauge, SerialSim
from tests.drivers.harness import Harness, run_drivers


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyPair]:
    with PtyPair(tmp_path, "ttyUSB0") as pair:
        yield pair


def serial(pty: PtyPair, profile: str, **kw: Any) -> SerialDriver:
    cfg = SerialConfig.model_validate(
        {
            "type": "serial",
            "id": "dev",
            "profile": profile,
            "port": str(pty.host),
            "reconnect_max": 0.5,
            **kw,
        }
    )
    return SerialDriver(cfg)


@asynccontextmanager
async def simulated(sim: SerialSim, *drivers: SerialDriver) -> AsyncIterator[Harness]:
    async with run_drivers(*drivers) as h, asyncio.TaskGroup() as tg:
        task = tg.create_task(sim.run(), name="test.serial-sim")
        try:
            yield h
        finally:
            task.cancel()


async def test_gps_positions_follow_the_route(pty: PtyPair) -> None:
    gps = GpsReceiver(str(pty.device), rate_hz=10)
    driver = serial(pty, "nmea_gps", report={"mode": "on_change"})
    async with simulated(gps, driver) as h:
        await h.wait(lambda: len(h.readings("dev", "lon")) >= 3)
        values = h.latest("dev")
        assert gps.last_fix is not None
        lat, lon, _, speed = gps.last_fix
    assert values["lat"] == pytest.approx(lat, abs=1e-4)
    assert values["lon"] == pytest.approx(lon, abs=1e-4)
    assert values["speed"] == pytest.approx(speed, abs=0.1)
    assert values["fix_quality"] == 1
    assert values["satellites"] == 9
    assert values["fix_valid"] is True
    assert h.events("dev") == ["device.online"]
    assert driver.rejected == {}


async def test_rain_gauge_lines(pty: PtyPair) -> None:
    gauge = RainGauge(str(pty.device), rate_hz=20, storm=(0, 100))
    async with simulated(gauge, serial(pty, "rain_gauge")) as h:
        await h.wait(lambda: len(h.readings("dev", "rain_rate")) >= 2)
    assert h.latest("dev")["rain_rate"] > 0
    assert {r.unit for r in h.readings("dev", "rain_total")} == {"mm"}


async def test_binary_particle_sensor(pty: PtyPair) -> None:
    sensor = Pms5003(str(pty.device), rate_hz=20)
    async with simulated(sensor, serial(pty, "pms5003")) as h:
        await h.wait(lambda: len(h.latest("dev")) == 3)
    values = h.latest("dev")
    assert values["pm10"] == values["pm2_5"] + 10


async def test_broken_checksums_garbage_and_truncation_are_rejected_and_counted(
    pty: PtyPair,
) -> None:
    gps = GpsReceiver(str(pty.device), rate_hz=10)
    driver = serial(pty, "nmea_gps", report={"mode": "periodic", "period": 0.01})

    def spoiled() -> int:
        return driver.framer.stats.discarded + sum(driver.rejected.values())

    async with simulated(gps, driver) as h:
        await h.wait(lambda: driver.frames >= 6)
        gps.break_checksums(4)
        await h.wait(lambda: driver.rejected["checksum"] == 4)
        before = spoiled()
        gps.garbage(300)
        await h.wait(lambda: spoiled() > before)
        before = spoiled()
        gps.truncate(2)
        await h.wait(lambda: spoiled() > before)
        frames = driver.frames
        await h.wait(lambda: driver.frames >= frames + 9)  # and the stream goes on
        assert gps.last_fix is not None
        lat = gps.last_fix[0]
    # (a truncated sentence glued to the next one fails its checksum too)
    assert driver.rejected["checksum"] >= 4
    # every latitude reported is one the receiver really sent: along its route
    lats = [r.value for r in h.readings("dev", "lat")]
    assert all(abs(v - lat) < 0.01 for v in lats)  # type: ignore[operator]
    assert h.events("dev") == ["device.online"]


async def test_silence_marks_the_device_offline_and_data_brings_it_back(pty: PtyPair) -> None:
    gauge = RainGauge(str(pty.device), rate_hz=20)
    driver = serial(pty, "rain_gauge", silence_timeout=0.5)
    async with simulated(gauge, driver) as h:
        await h.wait(lambda: driver.online is True)
        gauge.silent = True
        await h.wait(lambda: driver.online is False)
        gauge.silent = False
        await h.wait(lambda: driver.online is True)
    assert h.events("dev") == ["device.online", "device.offline", "device.online"]
    assert h.event_messages("dev", "device.offline") == ["no valid data for 0.5s"]


async def test_wrong_baud_rate_garbage_is_rejected_not_parsed(pty: PtyPair) -> None:
    gps = GpsReceiver(str(pty.device), rate_hz=10)
    driver = serial(pty, "nmea_gps", silence_timeout=0.7)
    gps.wrong_baud = True
    async with simulated(gps, driver) as h:
        await h.wait(lambda: driver.online is False, timeout=5)
        await asyncio.sleep(0.5)
    assert h.readings("dev") == []
    assert gps.sent_frames > 5
    assert driver.framer.stats.discarded + sum(driver.rejected.values()) > 0
    (reason,) = h.event_messages("dev", "device.offline")
    assert "does not parse" in reason


async def test_unplug_and_replug_is_survived(pty: PtyPair) -> None:
    gauge = RainGauge(str(pty.device), rate_hz=20)
    driver = serial(pty, "rain_gauge")
    async with run_drivers(driver) as h:
        async with asyncio.TaskGroup() as tg:
            sim = tg.create_task(gauge.run(), name="test.sim")
            await h.wait(lambda: driver.online is True)
            sim.cancel()
        pty.unplug()
        await h.wait(lambda: driver.online is False)
        await asyncio.sleep(1.0)  # a few failed reopen attempts
        pty.replug()
        async with asyncio.TaskGroup() as tg:
            sim = tg.create_task(gauge.run(), name="test.sim")
            await h.wait(lambda: driver.online is True, timeout=10)
            sim.cancel()
    assert h.events("dev") == ["device.online", "device.offline", "device.online"]
    assert driver.opens == 2
    (reason,) = h.event_messages("dev", "device.offline")
    assert "ttyUSB0-host" in reason


async def test_a_port_that_does_not_exist_is_reported_once(tmp_path: Path) -> None:
    cfg = SerialConfig.model_validate(
        {
            "type": "serial",
            "id": "dev",
            "profile": "rain_gauge",
            "port": str(tmp_path / "nope"),
            "reconnect_max": 0.2,
        }
    )
    driver = SerialDriver(cfg)
    async with run_drivers(driver) as h:
        await h.wait(lambda: driver.online is False)
        await asyncio.sleep(0.8)
    assert h.events("dev") == ["device.offline"]
    (reason,) = h.event_messages("dev", "device.offline")
    assert reason.startswith(f"cannot open {tmp_path / 'nope'}")


class Scripted(SerialSim):
    """Sends whatever `make(t)` returns."""

    def __init__(self, port: str, make: Any, rate_hz: float = 20) -> None:
        super().__init__(port, rate_hz=rate_hz)
        self.make = make

    def frames(self, t: float) -> list[bytes]:
        return list(self.make(t))


async def test_csv_lines_over_a_pty(pty: PtyPair) -> None:
    sim = Scripted(str(pty.device), lambda t: [b"W,21.5,55,1013.2,3.4\r\n", b"X,1,2,3,4\r\n"])
    driver = serial(pty, "weather_csv")
    async with simulated(sim, driver) as h:
        await h.wait(lambda: len(h.latest("dev")) == 4)
        await h.wait(lambda: driver.rejected["format"] >= 2)
    assert h.latest("dev") == {
        "temperature": 21.5,
        "humidity": 55.0,
        "pressure": 1013.2,
        "wind": 3.4,
    }


async def test_crc16_binary_frames_over_a_pty(pty: PtyPair, tmp_path: Path) -> None:
    profile = tmp_path / "level.yaml"
    profile.write_text(
        """
name: level
framing:
  kind: binary
  start: "AA55"
  length: {offset: 2, size: 1}
  crc: crc16-modbus
  crc_endian: little
parse: {kind: binary}
points:
  level: {type: uint16, offset: 3, scale: 0.01, unit: m, min: 0, max: 20}
  temperature: {type: int16, offset: 5, endian: little, scale: 0.1, unit: degC}
""",
        encoding="utf-8",
    )

    def frame(level_cm: int, temp_dc: int) -> bytes:
        body = b"\xaa\x55\x09" + struct.pack(">H", level_cm) + struct.pack("<h", temp_dc)
        return body + struct.pack("<H", crc16_modbus(body))

    bad = bytearray(frame(999, 0))
    bad[-1] ^= 1
    sim = Scripted(str(pty.device), lambda t: [frame(1234, -56), bytes(bad), b"\x00\xaa"])
    driver = serial(pty, str(profile))
    async with simulated(sim, driver) as h:
        await h.wait(lambda: len(h.latest("dev")) == 2 and driver.framer.stats.rejected >= 3)
    assert h.latest("dev") == {"level": 12.34, "temperature": -5.6}
    assert {r.value for r in h.readings("dev", "level")} == {12.34}  # 9.99 never got through
