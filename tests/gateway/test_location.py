from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.serial.driver import SerialConfig
from firmware_sim.broker import MosquittoBroker
from firmware_sim.pty import PtyPair
from firmware_sim.serial_devices import GpsReceiver
from gateway.app import Gateway
from gateway.bus import Bus
from gateway.config import (
    LocationSection,
    MqttSection,
    NodeConfig,
    NodeSection,
    OutboxSection,
    TlsSection,
)
from gateway.kernel.geo import distance_m, move
from gateway.kernel.records import Event, Reading, Severity
from gateway.location import LocationService
from tests.mqtt import collect


def reading(point: str, value: object, device: str = "gps") -> Reading:
    return Reading(device=device, point=point, value=value)  # type: ignore[arg-type]


def test_no_source_no_location_and_fixed_position() -> None:
    assert LocationService(Bus()).snapshot() is None
    fixed = LocationService(Bus(), fixed={"lat": -30.0, "lon": -51.2})
    assert fixed.snapshot() == {"lat": -30.0, "lon": -51.2, "valid": True, "source": "fixed"}


def test_fix_lifecycle_never_passes_a_stale_fix_as_current() -> None:
    loc = LocationService(Bus(), source="gps", stale_after=5.0)
    assert loc.snapshot(now=0) == {"valid": False, "reason": "no fix yet", "source": "gps"}
    loc.observe(reading("lat", -30.03), now=10)
    loc.observe(reading("lon", -51.21), now=10)
    loc.observe(reading("speed", 30.0), now=10)
    loc.observe(reading("lat", 1.0, device="other"), now=10)
    snap = loc.snapshot(now=11)
    assert snap == {
        "lat": -30.03,
        "lon": -51.21,
        "speed": 30.0,
        "age_s": 1.0,
        "source": "gps",
        "valid": True,
    }
    stale = loc.snapshot(now=16)
    assert stale is not None
    assert stale["valid"] is False
    assert stale["reason"] == "stale: last fix 6.0s ago"
    assert stale["lat"] == -30.03  # kept, but marked
    loc.observe(reading("fix_valid", False), now=17)
    assert loc.snapshot(now=17)["reason"] == "receiver reports no fix"  # type: ignore[index]
    loc.observe(reading("lat", -30.04), now=18)
    assert loc.snapshot(now=18)["valid"] is True  # type: ignore[index]
    loc.observe(Event(kind="device.offline", source="gps", message="ttyUSB0 lost"), now=19)
    assert loc.snapshot(now=19)["reason"] == "receiver offline: ttyUSB0 lost"  # type: ignore[index]


def test_position_at_a_moment_is_dead_reckoned_from_the_last_fix() -> None:
    loc = LocationService(Bus(), source="gps", stale_after=5.0)
    fix_ts = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
    for point, value in (("lat", -30.0), ("lon", -51.2), ("speed", 28.8), ("heading", 0.0)):
        loc.observe(Reading(device="gps", point=point, value=value, ts=fix_ts), now=10)
    # 28.8 km/h = 8 m/s north: 0.5 s after the fix the vehicle is 4 m further on
    later = loc.at(fix_ts + timedelta(seconds=0.5), now=10.6)
    assert later is not None
    assert later["valid"] is True
    assert later["extrapolated_s"] == 0.5
    assert distance_m((later["lat"], later["lon"]), move((-30.0, -51.2), 0.0, 4.0)) < 0.05
    earlier = loc.at(fix_ts - timedelta(seconds=0.25), now=10.6)  # a frame before the fix
    assert earlier is not None
    assert distance_m((earlier["lat"], earlier["lon"]), move((-30.0, -51.2), 180.0, 2.0)) < 0.05
    # never further than stale_after seconds either way
    far = loc.at(fix_ts + timedelta(seconds=60), now=10.6)
    assert far is not None
    assert far["extrapolated_s"] == 5.0
    # standing still, or no speed/heading known: the fix itself
    loc.observe(Reading(device="gps", point="speed", value=0.0, ts=fix_ts), now=10)
    assert loc.at(fix_ts + timedelta(seconds=1), now=10.6) == {
        **loc.snapshot(now=10.6),  # type: ignore[dict-item]
        "extrapolated_s": 1.0,
    }
    bare = LocationService(Bus(), source="gps")
    bare.observe(Reading(device="gps", point="lat", value=-30.0, ts=fix_ts), now=10)
    bare.observe(Reading(device="gps", point="lon", value=-51.2, ts=fix_ts), now=10)
    assert bare.at(fix_ts + timedelta(seconds=1), now=10.5) == bare.snapshot(now=10.5)
    # an invalid location is passed on as it is; a fixed one does not move
    assert loc.at(fix_ts, now=100)["valid"] is False  # type: ignore[index]
    fixed = LocationService(Bus(), fixed={"lat": -30.0, "lon": -51.2})
    assert fixed.at(fix_ts) == fixed.snapshot()


def test_location_source_must_be_a_device() -> None:
    with pytest.raises(ValueError, match=r"location\.source 'gps' is not one of the devices"):
        NodeConfig(node=NodeSection(id="n"), location=LocationSection(source="gps"))


async def test_events_carry_the_vehicle_position(tmp_path: Path, broker: MosquittoBroker) -> None:
    with PtyPair(tmp_path, "gps") as pty:
        gps = GpsReceiver(str(pty.device), rate_hz=10)
        config = NodeConfig(
            node=NodeSection(id="truck-3", data_dir=tmp_path / "data"),
            mqtt=MqttSection(host=broker.host, port=broker.port, tls=TlsSection(enabled=False)),
            outbox=OutboxSection(commit_interval=0.01),
            location=LocationSection(source="gps", stale_after=1.0),
            devices=[
                SerialConfig.model_validate(
                    {
                        "type": "serial",
                        "id": "gps",
                        "profile": "nmea_gps",
                        "port": str(pty.host),
                        "silence_timeout": 2,
                        "report": {"mode": "both", "period": 0.5, "min_interval": 0.2},
                    }
                )
            ],
        )
        gw = Gateway(config)
        async with (
            collect(broker, "cityneuron/v1/truck-3/events/#") as sub,
            asyncio.TaskGroup() as tg,
        ):
            tg.create_task(gw.run(handle_signals=False), name="gateway")
            sim = tg.create_task(gps.run(), name="test.gps")
            while not (gw.location.snapshot() or {}).get("valid"):
                await asyncio.sleep(0.05)
            await gw.bus.publish(
                Event(kind="alarm.pothole", source="cam", message="fresh", severity=Severity.MAJOR)
            )
            gps.silent = True
            await asyncio.sleep(1.5)  # longer than stale_after, shorter than silence
            await gw.bus.publish(Event(kind="alarm.pothole", source="cam", message="stale"))
            await sub.wait(lambda: len(sub.on("/events/alarm.pothole")) == 2)
            sim.cancel()
            gw.request_stop()
    fresh, stale = (m.json() for m in sub.on("/events/alarm.pothole"))
    assert fresh["location"]["valid"] is True
    assert gps.last_fix is not None
    assert fresh["location"]["lat"] == pytest.approx(gps.last_fix[0], abs=0.001)
    assert fresh["location"]["age_s"] < 1.0
    assert stale["location"]["valid"] is False
    assert stale["location"]["reason"].startswith("stale: last fix")
