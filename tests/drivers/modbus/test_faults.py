"""Every data type over TCP and RTU, and the faults a real line produces."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.profile import Profile, load_profile
from firmware_sim.modbus import ModbusSimServer, SimSlave
from firmware_sim.pty import PtyPair
from gateway.kernel.records import Quality
from tests.drivers.modbus.conftest import modbus_config, running

TYPES: dict[str, Any] = {
    "int16": -1234,
    "uint16": 54321,
    "int32": -123456789,
    "uint32": 3_000_000_000,
    "int64": -(2**62) + 5,
    "uint64": 2**63 + 7,
    "float32": 21.5,
    "float64": -1234.56789012,
}


def all_types_profile(path: Path) -> Profile:
    """Every register type in every byte/word order, plus bits, bools and a string."""
    lines = ["name: all_types", "points:"]
    address = 0
    for kind in TYPES:
        for byte_order in ("big", "little"):
            for word_order in ("big", "little"):
                name = f"{kind}_{byte_order[0]}{word_order[0]}"
                lines.append(
                    f"  {name}: {{table: holding_register, address: {address}, type: {kind},"
                    f" byte_order: {byte_order}, word_order: {word_order}}}"
                )
                address += 4
    lines += [
        "  text: {table: input_register, address: 0, type: string, length: 11}",
        "  flags: {table: input_register, address: 10, type: uint16}",
        "  flag3: {table: input_register, address: 10, type: bit, bit: 3}",
        "  flag12: {table: input_register, address: 10, type: bit, bit: 12}",
        "  scaled: {table: input_register, address: 11, type: int16, scale: 0.01, offset: 10}",
        "  relay: {table: coil, address: 3, type: bool, access: rw}",
        "  door: {table: discrete_input, address: 17, type: bool}",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_profile(str(path))


def expected_values(profile: Profile) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in profile.points:
        kind = name.rsplit("_", 1)[0]
        if kind in TYPES:
            values[name] = TYPES[kind]
    values.update(
        text="cityneuron!",
        flags=(1 << 3) | (1 << 12),
        scaled=-2.5,
        relay=True,
        door=True,
        flag3=True,
        flag12=True,
    )
    return values


@asynccontextmanager
async def line(kind: str, slaves: list[SimSlave], tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """A simulator on TCP, or on RTU over a socat pty pair; yields the connection config."""
    if kind == "tcp":
        async with ModbusSimServer(slaves) as server:
            yield {"kind": "tcp", "host": "127.0.0.1", "port": server.port}
        return
    with PtyPair(tmp_path, "rtu") as pty:
        async with ModbusSimServer(slaves, serial_port=str(pty.device), baudrate=38400):
            yield {"kind": "rtu", "port": str(pty.host), "baudrate": 38400}


@pytest.mark.parametrize("kind", ["tcp", "rtu"])
async def test_every_type_and_order(kind: str, tmp_path: Path) -> None:
    profile = all_types_profile(tmp_path / "all_types.yaml")
    slave = SimSlave(unit=7, profile=profile, fill_gaps=True)
    expected = expected_values(profile)
    for name, value in expected.items():
        if name not in ("flags", "flag3", "flag12"):
            slave.set(name, value)
    slave.set("flags", expected["flags"])
    async with line(kind, [slave], tmp_path) as connection:
        cfg = modbus_config(
            id="dev",
            profile=str(tmp_path / "all_types.yaml"),
            unit=7,
            connection=connection,
            poll_interval=0.05,
        )
        async with running(cfg) as h:
            await h.wait(lambda: len(h.latest("dev")) == len(profile.points))
            got = h.latest("dev")
            blocks = h.drivers["dev"].groups[0].blocks
    for name, value in expected.items():
        if isinstance(value, float):
            assert got[name] == pytest.approx(value, rel=1e-6), name
        else:
            assert got[name] == value, name
    # 32 points of 1-4 registers at 4-register spacing: two requests of at most 125
    holding = [b for b in blocks if b.table.value == "holding_register"]
    assert [(b.start, b.count) for b in holding] == [(0, 124), (124, 4)]
    assert all(r.quality is Quality.GOOD for r in h.readings("dev"))


async def test_reconnect_after_the_server_restarts(tmp_path: Path) -> None:
    slave = SimSlave(unit=1, profile=load_profile("manhole_cover"))
    server = ModbusSimServer([slave])
    await server.start()
    cfg = modbus_config(
        id="mh",
        profile="manhole_cover",
        unit=1,
        timeout=0.2,
        poll_interval=0.05,
        connection={"kind": "tcp", "host": "127.0.0.1", "port": server.port},
    )
    try:
        async with running(cfg) as h:
            await h.wait(lambda: h.drivers["mh"].online is True)
            await server.stop()
            await h.wait(lambda: h.drivers["mh"].online is False)
            server = ModbusSimServer([slave], port=server.port)
            await server.start()
            polls = h.drivers["mh"].polls
            await h.wait(lambda: h.drivers["mh"].online is True, timeout=15)
            await h.wait(lambda: h.drivers["mh"].polls > polls + 3)
    finally:
        await server.stop()
    assert h.events("mh") == ["device.online", "device.offline", "device.online"]


async def test_a_dropped_connection_is_reopened_without_going_offline() -> None:
    slave = SimSlave(unit=1, profile=load_profile("manhole_cover"))
    async with ModbusSimServer([slave]) as server:
        cfg = modbus_config(
            id="mh",
            profile="manhole_cover",
            unit=1,
            poll_interval=0.05,
            connection={"kind": "tcp", "host": "127.0.0.1", "port": server.port},
        )
        async with running(cfg) as h:
            await h.wait(lambda: h.drivers["mh"].online is True)
            for _ in range(3):
                server.drop_connections()
                target = h.drivers["mh"].polls + 2
                await h.wait(lambda t=target: h.drivers["mh"].polls > t)  # type: ignore[misc]
            line_ = h.drivers["mh"].line
            assert line_ is not None
            connects = line_.connects
    assert connects >= 4  # the first connection and one after each drop
    assert h.events("mh") == ["device.online"]


async def test_exception_answers_mark_the_device_unavailable_then_recover() -> None:
    slave = SimSlave(unit=1, profile=load_profile("manhole_cover"))
    async with ModbusSimServer([slave]) as server:
        cfg = modbus_config(
            id="mh",
            profile="manhole_cover",
            unit=1,
            poll_interval=0.05,
            connection={"kind": "tcp", "host": "127.0.0.1", "port": server.port},
        )
        async with running(cfg) as h:
            await h.wait(lambda: h.drivers["mh"].online is True)
            slave.fail_with = 6  # device busy
            await h.wait(lambda: h.drivers["mh"].online is False)
            slave.fail_with = None
            await h.wait(lambda: h.drivers["mh"].online is True, timeout=15)
    offline = [r for r in h.records if getattr(r, "kind", "") == "device.offline"]
    assert offline[0].message == "exception 6 (device busy)"  # type: ignore[union-attr]


async def test_corrupted_frames_are_counted_and_recovered_from(tmp_path: Path) -> None:
    slave = SimSlave(unit=1, profile=load_profile("manhole_cover"))
    with PtyPair(tmp_path, "rtu") as pty:
        async with ModbusSimServer([slave], serial_port=str(pty.device)) as server:
            cfg = modbus_config(
                id="mh",
                profile="manhole_cover",
                unit=1,
                timeout=0.2,
                poll_interval=0.05,
                connection={"kind": "rtu", "port": str(pty.host)},
            )
            async with running(cfg) as h:
                await h.wait(lambda: h.drivers["mh"].online is True)
                line_ = h.drivers["mh"].line
                assert line_ is not None
                server.corrupt(1)  # one bad frame: repeated at once, the device stays online
                await h.wait(lambda: line_.corrupt_frames == 1)
                polls = h.drivers["mh"].polls
                await h.wait(lambda: h.drivers["mh"].polls > polls + 3)
                assert h.events("mh") == ["device.online"]
                server.corrupt(2)  # the repeat is garbled too: this poll fails
                await h.wait(lambda: h.drivers["mh"].online is False)
                await h.wait(lambda: h.drivers["mh"].online is True, timeout=15)
    assert server.corrupted == 3
    assert line_.corrupt_frames == 3
    offline = [r for r in h.records if getattr(r, "kind", "") == "device.offline"]
    assert "garbled answer" in offline[0].message  # type: ignore[union-attr]


async def test_a_short_answer_makes_its_points_bad_not_the_driver_fail() -> None:
    """A slave that answers a read with one register fewer than asked (a well-formed frame)
    costs that poll's values, reported `bad`; the driver neither raises nor restarts."""
    slave = SimSlave(unit=1, profile=load_profile("manhole_cover"))
    async with ModbusSimServer([slave]) as server:
        cfg = modbus_config(
            id="mh",
            profile="manhole_cover",
            unit=1,
            poll_interval=0.05,
            connection={"kind": "tcp", "host": "127.0.0.1", "port": server.port},
        )
        async with running(cfg) as h:
            driver = h.drivers["mh"]
            await h.wait(lambda: driver.online is True)
            errors = driver.errors
            server.shorten(5)
            await h.wait(lambda: server.shortened == 5)
            await h.wait(lambda: driver.malformed >= 5)
            good_after = len(h.readings("mh"))
            await h.wait(lambda: len(h.readings("mh")) > good_after)
            bad = [r for r in h.readings("mh") if r.quality.value == "bad"]
            assert bad and all(r.value is None for r in bad)
            assert driver.errors >= errors + 5
            assert driver.online is True  # the device answers: it is its data that is wrong
            last = h.readings("mh")[-1]
    assert last.quality.value == "good"  # the next good answer is reported again
    assert h.events("mh") == ["device.online"]
