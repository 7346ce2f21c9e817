from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from drivers.api import WriteError
from drivers.modbus.profile import Table, load_profile
from firmware_sim.city import ManholeCover, RiverGauge
from firmware_sim.modbus import ModbusSimServer, SimSlave
from firmware_sim.pty import PtyPair
from gateway.kernel.records import Quality, Reading, ReadingBatch
from tests.drivers.modbus.conftest import modbus_config, running


def tcp(server: ModbusSimServer) -> dict[str, Any]:
    return {"kind": "tcp", "host": "127.0.0.1", "port": server.port}


async def test_reads_every_point_with_types_scaling_and_word_orders() -> None:
    river = SimSlave(unit=3, profile=load_profile("river_level"), sensor=RiverGauge())
    river.set("serial_number", "RL-0042")
    async with ModbusSimServer([river]) as server:
        cfg = modbus_config(
            id="river", profile="river_level", unit=3, connection=tcp(server), poll_interval=0.1
        )
        async with running(cfg) as h:
            await h.wait(lambda: len(h.latest("river")) == 5)
            values = h.latest("river")
    assert values["serial_number"] == "RL-0042"
    assert values["sensor_ok"] is True
    assert values["level"] == pytest.approx(1.2, abs=0.02)
    assert values["rain_total"] == 0.0
    assert 8.5 < values["water_temperature"] < 10.5
    units = {r.point: r.unit for r in h.readings("river")}
    assert units["level"] == "m"
    assert units["rain_total"] == "mm"
    assert h.events("river") == ["device.online"]
    assert all(r.quality is Quality.GOOD for r in h.readings("river"))


async def test_a_poll_is_one_record_on_the_bus_measured_at_one_moment() -> None:
    river = SimSlave(unit=3, profile=load_profile("river_level"), sensor=RiverGauge())
    async with ModbusSimServer([river]) as server:
        cfg = modbus_config(
            id="river", profile="river_level", unit=3, connection=tcp(server), poll_interval=0.1
        )
        async with running(cfg) as h:
            await h.wait(lambda: len(h.latest("river")) == 5)
    first = next(r for r in h.records if isinstance(r, ReadingBatch))
    assert not any(isinstance(r, Reading) for r in h.records)  # no reading travels alone
    assert set(first.points) == set(load_profile("river_level").points)  # the whole poll
    assert len({r.ts for r in first.readings()}) == 1
    assert len({r.id for r in h.readings("river")}) == len(h.readings("river"))


async def test_a_register_the_firmware_lacks_is_isolated_not_the_whole_device() -> None:
    manhole = SimSlave(unit=1, profile=load_profile("manhole_cover"), sensor=ManholeCover())
    manhole.holes.add((Table.INPUT_REGISTER, 3))  # temperature missing on this firmware
    async with ModbusSimServer([manhole]) as server:
        cfg = modbus_config(
            id="mh", profile="manhole_cover", unit=1, connection=tcp(server), poll_interval=0.05
        )
        async with running(cfg) as h:
            await h.wait(lambda: len(h.latest("mh")) == 10)
            before = manhole.requests
            await h.wait(lambda: h.drivers["mh"].polls >= 10)
            per_poll = (manhole.requests - before) / 10
            blocks = h.drivers["mh"].groups[0].blocks
    bad = h.readings("mh", "temperature")
    assert [(r.value, r.quality) for r in bad] == [(None, Quality.BAD)]
    good = [r for r in h.readings("mh") if r.point != "temperature"]
    assert good
    assert all(r.quality is Quality.GOOD for r in good)
    # the split was learned: later polls do not probe the bad register again
    assert all(
        not (b.table is Table.INPUT_REGISTER and b.start <= 3 < b.start + b.count) for b in blocks
    )
    assert per_poll <= len(blocks) + 0.5


async def test_on_change_reports_respect_deadbands() -> None:
    state = {"level": 1.0}
    river = SimSlave(unit=1, profile=load_profile("river_level"), sensor=lambda t: state)
    async with ModbusSimServer([river]) as server:
        cfg = modbus_config(
            id="r",
            profile="river_level",
            unit=1,
            connection=tcp(server),
            poll_interval=0.02,
            points=["level"],
            report={"mode": "on_change"},
        )
        async with running(cfg) as h:
            await h.wait(lambda: len(h.readings("r", "level")) == 1)
            state["level"] = 1.005  # below the profile's 0.01 m deadband
            polls = h.drivers["r"].polls
            await h.wait(lambda: h.drivers["r"].polls >= polls + 5)
            assert len(h.readings("r", "level")) == 1
            state["level"] = 1.02
            await h.wait(lambda: len(h.readings("r", "level")) == 2)
    assert [r.value for r in h.readings("r", "level")] == [1.0, 1.02]


async def test_periodic_reports_repeat_an_unchanged_value() -> None:
    river = SimSlave(unit=1, profile=load_profile("river_level"), sensor=lambda t: {"level": 2.0})
    async with ModbusSimServer([river]) as server:
        cfg = modbus_config(
            id="r",
            profile="river_level",
            unit=1,
            connection=tcp(server),
            poll_interval=0.02,
            points=["level"],
            report={"mode": "periodic", "period": 0.1},
        )
        async with running(cfg) as h:
            await h.wait(lambda: len(h.readings("r", "level")) >= 3)
            polls = h.drivers["r"].polls
    assert {r.value for r in h.readings("r", "level")} == {2.0}
    # far fewer reports than polls
    assert len(h.readings("r", "level")) < polls


async def test_poll_groups_run_at_their_own_rates() -> None:
    manhole = SimSlave(unit=1, profile=load_profile("manhole_cover"), sensor=ManholeCover())
    async with ModbusSimServer([manhole]) as server:
        cfg = modbus_config(
            id="mh",
            profile="manhole_cover",
            unit=1,
            connection=tcp(server),
            poll_interval=1.0,
            poll_groups=[{"name": "lid", "interval": 0.05, "points": ["lid_open", "tilt"]}],
            report={"mode": "periodic", "period": 0.01},
        )
        async with running(cfg) as h:
            await h.wait(lambda: len(h.readings("mh", "lid_open")) >= 12)
            slow = len(h.readings("mh", "battery"))
    assert slow <= 2


async def test_writes_are_validated_and_reach_the_device(tmp_path: Path) -> None:
    profile_path = tmp_path / "valve.yaml"
    profile_path.write_text(
        """
name: valve
points:
  mode_bits: {address: "40005", type: uint16, access: rw}
  remote: {address: "40005", type: bit, bit: 2, access: rw}
  setpoint: {address: "40010", type: float32, access: rw, min: 0, max: 10}
  pump: {table: coil, address: 1, type: bool, access: rw, write_multiple: true}
  limit: {address: "40020", type: uint16, access: rw, write_multiple: true}
""",
        encoding="utf-8",
    )
    manhole = SimSlave(unit=1, profile=load_profile("manhole_cover"))
    valve = SimSlave(unit=2, profile=load_profile(str(profile_path)))
    valve.set("mode_bits", 0b1001)
    async with ModbusSimServer([manhole, valve]) as server:
        configs = [
            modbus_config(id="mh", profile="manhole_cover", unit=1, connection=tcp(server)),
            modbus_config(id="v", profile=str(profile_path), unit=2, connection=tcp(server)),
        ]
        async with running(*configs) as h:
            await h.wait(lambda: h.drivers["mh"].online is True and h.drivers["v"].online)
            mh, v = h.drivers["mh"], h.drivers["v"]
            await mh.write("tilt_limit", 12.5)
            await mh.write("alarm_enabled", True)
            await v.write("remote", True)
            await v.write("setpoint", 2.75)
            await v.write("pump", True)
            await v.write("limit", 7)
            assert valve.get("setpoint") == 2.75
            assert valve.get("pump") is True
            assert valve.get("limit") == 7
            # FC6 single register (after an FC3 read of the bit's register), FC16 for a
            # float, FC15/FC16 where the point asks for "multiple" writes
            assert valve.write_codes == [6, 16, 15, 16]
            assert manhole.write_codes == [6, 5]
            assert manhole.get("tilt_limit") == pytest.approx(12.5)
            assert manhole.get("alarm_enabled") is True
            assert valve.get("mode_bits") == 0b1101  # the other bits kept
            refusals = {}
            for point, value in [
                ("tilt", 3),
                ("tilt_limit", 95),
                ("tilt_limit", "high"),
                ("nope", 1),
                ("report_interval", 10.5),
            ]:
                with pytest.raises(WriteError) as info:
                    await mh.write(point, value)
                refusals[point, str(value)] = info.value.reason
            # the written value is read back and reported
            await h.wait(lambda: h.latest("mh").get("tilt_limit") == 12.5)
    assert refusals[("tilt", "3")] == "point is read-only"
    assert refusals[("tilt_limit", "95")] == "95 is above the maximum 90"
    assert refusals[("tilt_limit", "high")] == "expects a number, got 'high'"
    assert refusals[("nope", "1")].startswith("no such point (writable: alarm_enabled,")
    assert "not representable" in refusals[("report_interval", "10.5")]
    assert [w[0] for w in manhole.writes] == ["tilt_limit", "alarm_enabled"]


async def test_write_to_a_silent_device_fails_with_the_reason() -> None:
    manhole = SimSlave(unit=1, profile=load_profile("manhole_cover"))
    async with ModbusSimServer([manhole]) as server:
        cfg = modbus_config(
            id="mh", profile="manhole_cover", unit=1, connection=tcp(server), timeout=0.2
        )
        async with running(cfg) as h:
            await h.wait(lambda: h.drivers["mh"].online is True)
            manhole.dead = True
            with pytest.raises(WriteError, match=r"no response within 0\.2s"):
                await h.drivers["mh"].write("tilt_limit", 10)


@pytest.fixture
def pty(tmp_path: Path) -> Any:
    with PtyPair(tmp_path, "rs485") as pair:
        yield pair


async def test_one_dead_slave_does_not_stall_the_rtu_line(pty: PtyPair) -> None:
    slaves = [
        SimSlave(unit=u, profile=load_profile("manhole_cover"), sensor=ManholeCover(seed=u))
        for u in (1, 2, 3)
    ]
    rtu = {"kind": "rtu", "port": str(pty.host), "baudrate": 115200}
    server = ModbusSimServer(slaves, serial_port=str(pty.device), baudrate=115200)
    await server.start()
    try:
        configs = [
            modbus_config(
                id=f"mh{u}",
                profile="manhole_cover",
                unit=u,
                connection=rtu,
                timeout=0.3,
                poll_interval=0.1,
                points=["lid_open", "tilt"],
            )
            for u in (1, 2, 3)
        ]
        async with running(*configs) as h:
            await h.wait(lambda: all(d.online for d in h.drivers.values()))
            # all three share one line object, hence one lock
            assert len({id(d.line) for d in h.drivers.values()}) == 1
            slaves[1].dead = True
            await h.wait(lambda: h.drivers["mh2"].online is False)
            polls = {k: d.polls for k, d in h.drivers.items()}
            errors = h.drivers["mh2"].errors
            await asyncio.sleep(3.0)
            healthy = [h.drivers[k].polls - polls[k] for k in ("mh1", "mh3")]
            dead_attempts = h.drivers["mh2"].errors - errors
            slaves[1].dead = False
            await h.wait(lambda: h.drivers["mh2"].online is True, timeout=15)
    finally:
        await server.stop()
    # 3 s at 10 polls/s: the healthy slaves keep (nearly) their rate...
    assert min(healthy) >= 20, healthy
    # ...because the dead one is only retried with backoff (1 s, 2 s, ...), not every cycle
    assert dead_attempts <= 3
    assert h.events("mh2") == ["device.online", "device.offline", "device.online"]
    assert h.events("mh1") == ["device.online"]


async def test_unplugged_adapter_is_survived(pty: PtyPair) -> None:
    slave = SimSlave(unit=1, profile=load_profile("manhole_cover"))
    rtu = {"kind": "rtu", "port": str(pty.host)}
    server = ModbusSimServer([slave], serial_port=str(pty.device))
    await server.start()
    cfg = modbus_config(
        id="mh", profile="manhole_cover", unit=1, connection=rtu, timeout=0.2, poll_interval=0.1
    )
    try:
        async with running(cfg) as h:
            await h.wait(lambda: h.drivers["mh"].online is True)
            await server.stop()
            pty.unplug()
            await h.wait(lambda: h.drivers["mh"].online is False)
            pty.replug()
            server = ModbusSimServer([slave], serial_port=str(pty.device))
            await server.start()
            await h.wait(lambda: h.drivers["mh"].online is True, timeout=20)
    finally:
        await server.stop()
    assert h.events("mh") == ["device.online", "device.offline", "device.online"]


async def test_slow_answers_within_the_timeout_are_fine_beyond_it_the_device_is_offline() -> None:
    slave = SimSlave(unit=1, profile=load_profile("manhole_cover"))
    async with ModbusSimServer([slave]) as server:
        cfg = modbus_config(
            id="mh",
            profile="manhole_cover",
            unit=1,
            connection=tcp(server),
            timeout=0.3,
            poll_interval=0.05,
            points=["tilt"],
        )
        async with running(cfg) as h:
            slave.delay = 0.1
            await h.wait(lambda: h.drivers["mh"].online is True)
            polls = h.drivers["mh"].polls
            await h.wait(lambda: h.drivers["mh"].polls >= polls + 3)
            assert h.drivers["mh"].online is True
            slave.delay = 0.5
            await h.wait(lambda: h.drivers["mh"].online is False)
            slave.delay = 0.0
            await h.wait(lambda: h.drivers["mh"].online is True, timeout=15)
    assert h.events("mh") == ["device.online", "device.offline", "device.online"]
