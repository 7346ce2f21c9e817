"""Device profiles: a device's Modbus register map, described once as YAML data.

Addresses are 0-based protocol addresses (what goes on the wire). The common 1-based
"Modicon" notation is accepted too, written as a string: ``"00001"``-``"09999"`` coils,
``"10001"`` discrete inputs, ``"30001"`` input registers, ``"40001"`` holding registers
(six-digit forms such as ``"400001"`` as well); the table is then implied and
``"40001"`` means holding register 0.
"""

from __future__ import annotations

import itertools
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.profiles import ProfileLoader

PROFILE_DIR = Path(__file__).with_name("profiles")


class Table(StrEnum):
    """The four Modbus data tables."""

    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    INPUT_REGISTER = "input_register"
    HOLDING_REGISTER = "holding_register"

    @property
    def is_bit(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE_INPUT)

    @property
    def writable(self) -> bool:
        return self in (Table.COIL, Table.HOLDING_REGISTER)

    @property
    def max_read(self) -> int:
        """Largest count one read request may ask for (Modbus spec)."""
        return 2000 if self.is_bit else 125


class DataType(StrEnum):
    BOOL = "bool"  # a coil or discrete input
    BIT = "bit"  # one bit of a register
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


REGISTERS = {
    DataType.BIT: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
}

INT_RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}

_MODICON = re.compile(r"^([0134])(\d{4,5})$")
_MODICON_TABLE = {
    "0": Table.COIL,
    "1": Table.DISCRETE_INPUT,
    "3": Table.INPUT_REGISTER,
    "4": Table.HOLDING_REGISTER,
}


def parse_address(value: int | str) -> tuple[Table | None, int]:
    """0-based address and (for Modicon notation) the implied table."""
    if isinstance(value, int):
        if not 0 <= value <= 65535:
            raise ValueError(f"address {value} is outside 0..65535")
        return None, value
    text = value.strip()
    match = _MODICON.match(text)
    if match is None:
        if text.isdigit():
            return parse_address(int(text))
        raise ValueError(
            f"address {value!r} is neither a 0-based number nor Modicon notation like '40001'"
        )
    number = int(match.group(2))
    if number < 1 or number > 65536:
        raise ValueError(f"address {value!r}: register number must be 1..65536")
    return _MODICON_TABLE[match.group(1)], number - 1


class Point(BaseModel):
    """One named value in a device's register map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="", description="Point name (the key in the profile).")
    table: Table = Field(description="Data table; implied by Modicon addresses like '40001'.")
    address: int = Field(
        ge=0,
        le=65535,
        description="0-based protocol address, or 1-based Modicon notation as a string.",
    )
    type: DataType = Field(default=DataType.UINT16, description="Data type of the value.")
    bit: int | None = Field(
        default=None, ge=0, le=15, description="Bit number (0 = least significant), type bit."
    )
    length: int | None = Field(
        default=None, ge=1, le=250, description="Length in bytes of a string point."
    )
    byte_order: Literal["big", "little"] | None = Field(
        default=None, description="Byte order inside each register; profile default if unset."
    )
    word_order: Literal["big", "little"] | None = Field(
        default=None, description="Order of registers in multi-register values."
    )
    scale: float = Field(default=1.0, description="Value = raw * scale + offset.")
    offset: float = Field(default=0.0, description="Added after scaling.")
    unit: str | None = Field(default=None, description="Engineering unit, e.g. m, bar, dB.")
    access: Literal["r", "rw"] = Field(default="r", description="r = read-only, rw = writable.")
    min: float | None = Field(default=None, description="Lowest value a write may set.")
    max: float | None = Field(default=None, description="Highest value a write may set.")
    deadband: float | None = Field(
        default=None, ge=0, description="Change needed before an on-change report."
    )
    write_multiple: bool = Field(
        default=False, description="Write with FC15/FC16 even for one coil or register."
    )
    description: str | None = Field(default=None, description="What the point means.")

    @model_validator(mode="before")
    @classmethod
    def _modicon(cls, data: Any) -> Any:
        """Turn '40001'-style addresses into table + 0-based address."""
        if isinstance(data, dict) and isinstance(data.get("address"), str):
            implied, address = parse_address(data["address"])
            table = data.get("table")
            if implied is not None and table is not None and table != implied.value:
                raise ValueError(
                    f"address {data['address']!r} is a {implied.value} but table is {table}"
                )
            data = {**data, "address": address}
            if implied is not None:
                data["table"] = implied.value
        return data

    @property
    def start(self) -> int:
        return self.address

    @property
    def count(self) -> int:
        """Number of registers (or bits) the point occupies."""
        if self.type is DataType.BOOL:
            return 1
        if self.type is DataType.STRING:
            return ((self.length or 2) + 1) // 2
        return REGISTERS[self.type]

    @property
    def end(self) -> int:
        return self.start + self.count

    @property
    def writable(self) -> bool:
        return self.access == "rw"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        table = self.table
        if table.is_bit and self.type is not DataType.BOOL:
            raise ValueError(f"a {table.value} holds bool values, not {self.type.value}")
        if not table.is_bit and self.type is DataType.BOOL:
            raise ValueError("type bool is for coils and discrete inputs; use bit for registers")
        if (self.type is DataType.BIT) != (self.bit is not None):
            raise ValueError("bit is required with type bit, and only with it")
        if (self.type is DataType.STRING) != (self.length is not None):
            raise ValueError("length is required with type string, and only with it")
        if self.access == "rw" and not table.writable:
            raise ValueError(f"a {table.value} cannot be written")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        if self.end > 65536:
            raise ValueError("point extends beyond address 65535")
        return self


class Profile(BaseModel):
    """A device model's register map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Profile name.")
    vendor: str | None = Field(default=None, description="Maker of the device.")
    model: str | None = Field(default=None, description="Device model.")
    description: str | None = Field(default=None, description="What the device is.")
    byte_order: Literal["big", "little"] = Field(
        default="big", description="Default byte order inside registers (Modbus: big)."
    )
    word_order: Literal["big", "little"] = Field(
        default="big", description="Default register order of multi-register values."
    )
    points: dict[str, Point] = Field(description="Points by name.")

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("points"), dict):
            points = {}
            for key, value in data["points"].items():
                named = value
                if isinstance(value, dict) and "name" not in value:
                    named = {**value, "name": key}
                points[key] = named
            data = {**data, "points": points}
        return data

    @model_validator(mode="after")
    def _no_overlap(self) -> Self:
        if not self.points:
            raise ValueError("a profile needs at least one point")
        by_table: dict[Table, list[Point]] = {}
        for p in self.points.values():
            by_table.setdefault(p.table, []).append(p)
        for table, pts in by_table.items():
            # bit points may overlay registers that are also read whole (status words)
            whole = sorted((p for p in pts if p.type is not DataType.BIT), key=lambda p: p.start)
            for a, b in itertools.pairwise(whole):
                if b.start < a.end:
                    raise ValueError(f"points {a.name} and {b.name} overlap in {table.value}")
            bits: dict[tuple[int, int | None], str] = {}
            for p in pts:
                if p.type is DataType.BIT:
                    key = (p.start, p.bit)
                    if key in bits:
                        raise ValueError(f"points {bits[key]} and {p.name} are the same bit")
                    bits[key] = p.name
        return self

    def byte_order_of(self, point: Point) -> Literal["big", "little"]:
        return point.byte_order or self.byte_order

    def word_order_of(self, point: Point) -> Literal["big", "little"]:
        return point.word_order or self.word_order


class ProfileError(ValueError):
    """A profile could not be found or is invalid; the message says where and why."""


_LOADER = ProfileLoader(Profile, PROFILE_DIR, kind="profile", error=ProfileError)


def shipped_profiles() -> list[str]:
    return _LOADER.shipped()


def resolve(ref: str, base_dir: Path | None = None) -> Path:
    """Path of profile `ref`: a shipped name, or a path (relative to `base_dir`)."""
    return _LOADER.resolve(ref, base_dir)


def load_profile(ref: str, base_dir: Path | None = None) -> Profile:
    """Load (cached) the profile named or located by `ref`."""
    return _LOADER.load(ref, base_dir)
