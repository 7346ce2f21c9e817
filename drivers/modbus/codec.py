"""Registers <-> engineering values for profile points.

The register arithmetic is pymodbus's (`convert_from_registers` / `convert_to_registers`,
which handle word order); byte order inside a register, bits, scaling and range checks
are done here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pymodbus.client.mixin import ModbusClientMixin

from drivers.modbus.profile import INT_RANGES, DataType, Point, Profile
from gateway.records import Value

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
    raw = ModbusClientMixin.convert_from_registers(
        registers, _PYMODBUS_TYPE[point.type], word_order=profile.word_order_of(point)
    )
    if point.type is DataType.STRING:
        return str(raw).rstrip("\x00 ")
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
