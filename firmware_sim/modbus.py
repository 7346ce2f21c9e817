"""Simulated Modbus slaves on real pymodbus servers (TCP, or RTU on a pseudo-terminal).

A `SimSlave` holds a device's four data tables, laid out from a device profile. Values of
read-only points come from a *sensor model* (a function of time) on every read; writable
points keep what a client wrote. The encoding of values into registers here is written
independently of the driver's codec (plain `struct`), so the two check each other.

Fault injection: per slave `dead` (the slave stops answering: the request times out),
`holes` (addresses this firmware does not implement: *illegal data address*), `fail_with`
(answer every request with that exception code, e.g. 6 *device busy*), `delay` (slow
answers); per server `corrupt(n)` (the next n answers are garbled on the wire) and
`drop_connections()` (TCP: close every client connection, as a gateway reboot does).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from drivers.modbus.profile import DataType, Point, Profile, Table

logger = logging.getLogger(__name__)

Sensor = Callable[[float], Mapping[str, Any]]

_STRUCT = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}

_FC_TABLE = {
    1: Table.COIL,
    5: Table.COIL,
    15: Table.COIL,
    2: Table.DISCRETE_INPUT,
    3: Table.HOLDING_REGISTER,
    6: Table.HOLDING_REGISTER,
    16: Table.HOLDING_REGISTER,
    22: Table.HOLDING_REGISTER,
    23: Table.HOLDING_REGISTER,
    4: Table.INPUT_REGISTER,
}


def to_registers(point: Point, profile: Profile, value: Any) -> list[int]:
    """Raw registers of `value` (engineering units) as the device stores them."""
    if point.type is DataType.STRING:
        data = str(value).encode().ljust(point.count * 2, b"\x00")[: point.count * 2]
    else:
        raw = (
            value if (point.scale, point.offset) == (1, 0) else (value - point.offset) / point.scale
        )
        fmt = _STRUCT[point.type]
        data = struct.pack(">" + fmt, raw if fmt in "fd" else round(raw))
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if (point.word_order or profile.word_order) == "little" and point.type is not DataType.STRING:
        words.reverse()
    if (point.byte_order or profile.byte_order) == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def from_registers(point: Point, profile: Profile, registers: Sequence[int]) -> Any:
    words = [r.to_bytes(2, "big") for r in registers]
    if (point.byte_order or profile.byte_order) == "little":
        words = [w[::-1] for w in words]
    if (point.word_order or profile.word_order) == "little" and point.type is not DataType.STRING:
        words.reverse()
    data = b"".join(words)
    if point.type is DataType.STRING:
        return data.rstrip(b"\x00").decode()
    (raw,) = struct.unpack(">" + _STRUCT[point.type], data)
    return raw if (point.scale, point.offset) == (1, 0) else raw * point.scale + point.offset


@dataclass
class SimSlave:
    """One simulated device (unit id) with a profile's register layout."""

    unit: int
    profile: Profile
    sensor: Sensor | None = None
    clock: Callable[[], float] = field(default=lambda: asyncio.get_running_loop().time())
    dead: bool = False
    delay: float = 0.0
    fail_with: int | None = None
    fill_gaps: bool = False  # unused addresses between points read as 0, not as errors
    holes: set[tuple[Table, int]] = field(default_factory=set)
    requests: int = 0
    writes: list[tuple[str, Any]] = field(default_factory=list)
    write_codes: list[int] = field(default_factory=list)  # function code of every write

    def __post_init__(self) -> None:
        self.bits: dict[Table, dict[int, bool]] = {Table.COIL: {}, Table.DISCRETE_INPUT: {}}
        self.regs: dict[Table, dict[int, int]] = {
            Table.HOLDING_REGISTER: {},
            Table.INPUT_REGISTER: {},
        }
        for point in self.profile.points.values():
            if point.table.is_bit:
                self.bits[point.table][point.start] = False
            else:
                for a in range(point.start, point.end):
                    self.regs[point.table][a] = 0
        if self.fill_gaps:
            for regs in self.regs.values():
                if regs:
                    for a in range(max(regs)):
                        regs.setdefault(a, 0)
        self._t0: float | None = None

    # --- values ---------------------------------------------------------------------

    def set(self, name: str, value: Any) -> None:
        """Set point `name` to `value` in engineering units."""
        point = self.profile.points[name]
        if point.table.is_bit:
            self.bits[point.table][point.start] = bool(value)
        elif point.type is DataType.BIT:
            assert point.bit is not None
            reg = self.regs[point.table][point.start]
            mask = 1 << point.bit
            if (point.byte_order or self.profile.byte_order) == "little":
                mask = ((mask & 0xFF) << 8) | (mask >> 8)
            self.regs[point.table][point.start] = reg | mask if value else reg & ~mask
        else:
            for i, r in enumerate(to_registers(point, self.profile, value)):
                self.regs[point.table][point.start + i] = r

    def get(self, name: str) -> Any:
        """Current value of point `name` in engineering units."""
        point = self.profile.points[name]
        if point.table.is_bit:
            return self.bits[point.table][point.start]
        regs = [self.regs[point.table][a] for a in range(point.start, point.end)]
        if point.type is DataType.BIT:
            assert point.bit is not None
            reg = regs[0]
            if (point.byte_order or self.profile.byte_order) == "little":
                reg = ((reg & 0xFF) << 8) | (reg >> 8)
            return bool((reg >> point.bit) & 1)
        return from_registers(point, self.profile, regs)

    def _refresh(self) -> None:
        if self.sensor is None:
            return
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        for name, value in self.sensor(now - self._t0).items():
            self.set(name, value)

    # --- pymodbus glue ----------------------------------------------------------------

    def simdevice(self) -> SimDevice:
        """The pymodbus device serving this slave's tables."""

        def blocks(table: Table) -> list[SimData]:
            if table.is_bit:
                addrs = sorted(self.bits[table])
                if not addrs:
                    return [SimData(address=0, values=[False] * 16, datatype=SimType.BITS)]
                top = addrs[-1] + 1
                return [SimData(address=0, values=[False] * top, datatype=SimType.BITS)]
            out: list[SimData] = []
            addrs = sorted(self.regs[table])
            if not addrs:
                return [SimData(address=0, count=1, datatype=SimType.INVALID)]
            # one block per run of consecutive addresses; gaps stay invalid addresses
            run = [addrs[0]]
            for a in addrs[1:]:
                if a == run[-1] + 1:
                    run.append(a)
                    continue
                out.append(
                    SimData(address=run[0], count=len(run), values=0, datatype=SimType.REGISTERS)
                )
                run = [a]
            out.append(
                SimData(address=run[0], count=len(run), values=0, datatype=SimType.REGISTERS)
            )
            return out

        return SimDevice(
            id=self.unit,
            simdata=(
                blocks(Table.COIL),
                blocks(Table.DISCRETE_INPUT),
                blocks(Table.HOLDING_REGISTER),
                blocks(Table.INPUT_REGISTER),
            ),
            action=self._action,
        )

    async def _action(  # noqa: PLR0917 - pymodbus calls it with six positional arguments
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.dead:
            # the server is built with ignore_missing_devices: no answer at all
            raise NoSuchIdException(f"simulated slave {self.unit} is dead")
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            return ExcCodes(self.fail_with)
        table = _FC_TABLE[function_code]
        if any((table, a) in self.holes for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        if values is not None and function_code in (5, 6, 15, 16):
            self.write_codes.append(function_code)
            self._write(table, address, values)
        self._refresh()
        self._fill(table, start_address, registers)
        return None

    def _write(self, table: Table, address: int, values: list[int] | list[bool]) -> None:
        if table.is_bit:
            for i, v in enumerate(values):
                self.bits[table][address + i] = bool(v)
        else:
            for i, v in enumerate(values):
                self.regs[table][address + i] = int(v)
        for point in self.profile.points.values():
            if point.table is table and address <= point.start < address + len(values):
                self.writes.append((point.name, self.get(point.name)))

    def _fill(self, table: Table, start: int, registers: list[int]) -> None:
        """Copy the model into pymodbus's runtime memory before it answers."""
        if table.is_bit:
            bits = self.bits[table]
            base = start * 16
            for i in range(len(registers)):
                word = 0
                for b in range(16):
                    if bits.get(base + i * 16 + b, False):
                        word |= 1 << b
                registers[i] = word
            return
        regs = self.regs[table]
        for i in range(len(registers)):
            registers[i] = regs.get(start + i, 0)


async def _silent(*_args: object) -> ExcCodes | None:
    raise NoSuchIdException("no such unit on this simulated line")


class ModbusSimServer:
    """A pymodbus server for a set of slaves: TCP on localhost, or RTU on a serial port."""

    def __init__(
        self,
        slaves: Sequence[SimSlave],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        serial_port: str | None = None,
        baudrate: int = 19200,
    ) -> None:
        self.slaves = {s.unit: s for s in slaves}
        self.host = host
        self.port = port
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.corrupted = self.shortened = 0  # answers garbled, answers shortened
        self._corrupt_next = self._shorten_next = 0
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    def corrupt(self, n: int = 1) -> None:
        """Garble the next `n` answers (one byte flipped: a CRC or framing error)."""
        self._corrupt_next += n

    def shorten(self, n: int = 1) -> None:
        """Answer the next `n` register reads (FC3/FC4, Modbus TCP) with one register
        fewer than asked, in a well-formed frame: a firmware bug seen in the field."""
        self._shorten_next += n

    def _short(self, data: bytes) -> bytes | None:
        # MBAP (transaction, protocol, length, unit) + function, byte count, registers
        if len(data) < 11 or data[7] not in (3, 4) or data[8] < 2:
            return None
        count = data[8] - 2
        length = int.from_bytes(data[4:6], "big") - 2
        return data[:4] + length.to_bytes(2, "big") + data[6:8] + bytes([count]) + data[9:-2]

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending and self._shorten_next > 0 and self.serial_port is None:
            short = self._short(data)
            if short is not None:
                self._shorten_next -= 1
                self.shortened += 1
                return short
        if sending and self._corrupt_next > 0 and len(data) > 2:
            self._corrupt_next -= 1
            self.corrupted += 1
            return data[:-1] + bytes([data[-1] ^ 0x5A])
        return data

    def drop_connections(self) -> None:
        """Close every client connection (TCP), as when a Modbus gateway reboots."""
        if self._server is not None:
            for conn in list(self._server.active_connections.values()):
                conn.close()

    async def start(self) -> None:
        devices = [s.simdevice() for s in self.slaves.values()]
        if 0 not in self.slaves:
            # pymodbus sends unknown unit ids to device 0; a real line stays silent
            devices.append(
                SimDevice(
                    id=0,
                    simdata=SimData(address=0, values=[0], datatype=SimType.REGISTERS),
                    action=_silent,
                )
            )
        if self.serial_port is not None:
            self._server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=self.serial_port,
                baudrate=self.baudrate,
                ignore_missing_devices=True,
                trace_packet=self._trace,
            )
        else:
            if not self.port:
                from firmware_sim.broker import free_port  # noqa: PLC0415

                self.port = free_port(self.host)
            self._server = ModbusTcpServer(
                devices,
                address=(self.host, self.port),
                ignore_missing_devices=True,
                trace_packet=self._trace,
            )
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> ModbusSimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
