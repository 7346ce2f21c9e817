"""Registers <-> engineering values for profile points.

The register arithmetic is pymodbus's (`convert_from_registers` / `convert_to_registers`,
which handle word order); byte order inside a register, bits, scaling and range checks
are done here.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, Literal

from pymodbus.client.mixin import ModbusClientMixin

from drivers.api import Value
from drivers.modbus.profile import INT_RANGES, DataType, Point, Profile

_DT = ModbusClientMixin.DATATYPE
_PYMODBUS_TYPE = {
    DataType.INT16: _DT.INT16,
    DataType.UINT16: _DT.UINT16,
    DataType.INT32: _DT.INT32,
    DataType.UINT32: _DT.UINT32,
    DataType.INT64: _DT.INT64,
    DataType.UINT64: _DT.UINT64,
    DataType.FLOAT32: _DT.FLOAT32,
    DataType.FLOAT64: _DT.FLOAT64,
    DataType.STRING: _DT.STRING,
}


class EncodeError(ValueError):
    """A value cannot be written to a point; the message says why."""


def _swap(registers: Sequence[int], byte_order: Literal["big", "little"]) -> list[int]:
    if byte_order == "big":
        return list(registers)
    return [((r & 0xFF) << 8) | (r >> 8) for r in registers]


def _unscaled(point: Point, value: float) -> float:
    """Raw value for an engineering value; exact for integers when there is no scaling."""
    if point.scale == 1.0 and point.offset == 0.0:
        return value
    return (value - point.offset) / point.scale


def _scaled(point: Point, raw: float) -> float | int:
    if point.scale == 1.0 and point.offset == 0.0:
        return raw
    value = raw * point.scale + point.offset
    # keep scaled values free of binary noise such as 21.400000000000002
    return round(value, 10)


def decode(point: Point, profile: Profile, data: Sequence[int] | Sequence[bool]) -> Value:
    """Value of `point` from its registers (or its bit, for coils/discrete inputs)."""
    if point.type is DataType.BOOL:
        return bool(data[0])
    registers = _swap([int(r) for r in data], profile.byte_order_of(point))
    if point.type is DataType.BIT:
        return bool((registers[0] >> (point.bit or 0)) & 1)
    if point.type is DataType.STRING:
        # a device's text is not trusted to be UTF-8: undecodable bytes become U+FFFD
        data = b"".join(r.to_bytes(2, "big") for r in registers)
        return data.decode("utf-8", errors="replace").rstrip("\x00 ")
    raw = ModbusClientMixin.convert_from_registers(
        registers, _PYMODBUS_TYPE[point.type], word_order=profile.word_order_of(point)
    )
    if isinstance(raw, float):
        if not math.isfinite(raw):
            return None
        if point.type is DataType.FLOAT32:
            raw = float(f"{raw:.7g}")  # a float32 carries about 7 significant digits
    if not isinstance(raw, int | float):
        raise TypeError(f"{point.name}: unexpected non-scalar {raw!r}")
    return _scaled(point, raw)


def encode(point: Point, profile: Profile, value: Any, current: int | None = None) -> list[int]:
    """Registers (or ``[0|1]`` for a coil) that write `value` to `point`.

    `current` is the register's present content, needed for a bit inside a register.
    Raises `EncodeError` if the value is of the wrong type or out of range.
    """
    if point.type in (DataType.BOOL, DataType.BIT):
        return _encode_bit(point, profile, value, current)
    if point.type is DataType.STRING:
        return _encode_string(point, profile, value)
    return _encode_number(point, profile, value)


def _encode_bit(point: Point, profile: Profile, value: Any, current: int | None) -> list[int]:
    if not isinstance(value, bool) and value not in (0, 1):
        raise EncodeError(f"expects true/false (or 0/1), got {value!r}")
    bit = bool(value)
    if point.type is DataType.BOOL:
        return [int(bit)]
    if current is None:
        raise EncodeError("needs the register's current value to change one bit")
    mask = 1 << (point.bit or 0)
    reg = _swap([current], profile.byte_order_of(point))[0]
    reg = reg | mask if bit else reg & ~mask
    return _swap([reg], profile.byte_order_of(point))


def _encode_string(point: Point, profile: Profile, value: Any) -> list[int]:
    if not isinstance(value, str):
        raise EncodeError(f"expects a string, got {value!r}")
    data = value.encode()
    length = point.length or 0
    if len(data) > length:
        raise EncodeError(f"string of {len(data)} bytes exceeds the point's {length}")
    data = data.ljust(point.count * 2, b"\x00")
    return _swap(
        [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)],
        profile.byte_order_of(point),
    )


def _encode_number(point: Point, profile: Profile, value: Any) -> list[int]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EncodeError(f"expects a number, got {value!r}")
    if not math.isfinite(value):
        raise EncodeError(f"expects a finite number, got {value!r}")
    if point.min is not None and value < point.min:
        raise EncodeError(f"{value} is below the minimum {point.min:g}")
    if point.max is not None and value > point.max:
        raise EncodeError(f"{value} is above the maximum {point.max:g}")
    raw: float = _unscaled(point, value)
    if point.type in INT_RANGES:
        rounded = round(raw)
        if abs(rounded - raw) > 1e-6 * max(1.0, abs(raw)):
            unit = f" {point.unit}" if point.unit else ""
            raise EncodeError(f"{value} is not representable (resolution {point.scale:g}{unit})")
        lo, hi = INT_RANGES[point.type]
        if not lo <= rounded <= hi:
            raise EncodeError(f"{value} does not fit in {point.type.value}")
        raw = rounded
    registers = ModbusClientMixin.convert_to_registers(
        raw, _PYMODBUS_TYPE[point.type], word_order=profile.word_order_of(point)
    )
    return _swap(registers, profile.byte_order_of(point))


_FAST_FMT = {
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.INT64: ">q",
    DataType.UINT64: ">Q",
    DataType.FLOAT32: ">f",
    DataType.FLOAT64: ">d",
}


class BlockDecoder:
    """Decodes the points of one read block; built once per block.

    `raw` turns a response into one comparable item per point: for the common layout
    (big-endian bytes and words, no overlap) all such points come out of a single
    `struct.unpack_from` over the block; other points keep their registers and go through
    `decode`. `value` then turns one raw item into the point's value, exactly as `decode`
    would. Comparing raw tuples lets the driver skip points whose registers did not change.
    """

    def __init__(self, points: Sequence[Point], start: int, profile: Profile) -> None:
        self.profile = profile
        self._bits = bool(points) and points[0].type is DataType.BOOL
        fast: list[Point] = []
        slow: list[Point] = []
        fmt = ">"
        cursor = 0  # registers into the block covered by the format so far
        for p in sorted(points, key=lambda q: q.start):
            offset = p.start - start
            if (
                not self._bits
                and p.type in _FAST_FMT
                and profile.byte_order_of(p) == "big"
                and profile.word_order_of(p) == "big"
                and offset >= cursor
            ):
                if offset > cursor:
                    fmt += f"{(offset - cursor) * 2}x"
                fmt += _FAST_FMT[p.type][1]
                cursor = offset + p.count
                fast.append(p)
            else:
                slow.append(p)
        self.points: list[Point] = fast + slow
        self._struct = struct.Struct(fmt) if fast else None
        self._slow = [(p.start - start, p.count) for p in slow]
        self._nfast = len(fast)

    def raw(self, data: Sequence[int] | Sequence[bool]) -> tuple[Any, ...]:
        """One comparable item per point of `points`, in that order."""
        if self._bits:
            return tuple(bool(data[o]) for o, _ in self._slow)
        head: tuple[Any, ...] = ()
        if self._struct is not None:
            buf = struct.pack(f">{len(data)}H", *data)
            head = self._struct.unpack_from(buf)
        return head + tuple(tuple(data[o : o + n]) for o, n in self._slow)

    def value(self, index: int, raw: Any) -> Value:
        """The value of point number `index` from its raw item."""
        p = self.points[index]
        if index >= self._nfast:
            return decode(p, self.profile, raw if isinstance(raw, tuple) else (raw,))
        if isinstance(raw, float):
            if not math.isfinite(raw):
                return None
            if p.type is DataType.FLOAT32:
                raw = float(f"{raw:.7g}")
        return _scaled(p, raw)

    def __call__(self, data: Sequence[int] | Sequence[bool]) -> list[tuple[Point, Value]]:
        """Every point with its value."""
        return [(self.points[i], self.value(i, r)) for i, r in enumerate(self.raw(data))]
