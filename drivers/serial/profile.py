"""Serial device profiles: how frames are cut from the byte stream and what they mean."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.profiles import ProfileLoader

PROFILE_DIR = Path(__file__).with_name("profiles")

NMEA_POINTS = {
    "lat": ("deg", -90.0, 90.0),
    "lon": ("deg", -180.0, 180.0),
    "alt": ("m", -1000.0, 20000.0),
    "speed": ("km/h", 0.0, 4000.0),
    "heading": ("deg", 0.0, 360.0),
    "fix_quality": (None, 0, 8),
    "satellites": (None, 0, 99),
    "hdop": (None, 0.0, 100.0),
    "fix_valid": (None, None, None),
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LineFraming(_Model):
    kind: Literal["line"] = Field(description="Text lines ended by CR, LF or CRLF.")
    max_length: int = Field(default=512, ge=8, le=65536, description="Longest line kept.")
    encoding: Literal["ascii", "utf-8", "latin-1"] = Field(
        default="ascii", description="Text encoding; undecodable lines are rejected."
    )


class LengthField(_Model):
    offset: int = Field(ge=0, description="Position of the length field from frame start.")
    size: Literal[1, 2] = Field(default=1, description="Width of the length field in bytes.")
    endian: Literal["big", "little"] = Field(default="big", description="Byte order.")
    adjust: int = Field(
        default=0, description="Added to the field's value to get the whole frame length."
    )


class BinaryFraming(_Model):
    kind: Literal["binary"] = Field(description="Binary frames: start bytes, length, check.")
    start: str = Field(
        pattern=r"^([0-9A-Fa-f]{2}){1,4}$", description="Start bytes in hex, e.g. 424D."
    )
    length: LengthField = Field(description="Where the frame length is.")
    crc: Literal["crc16-modbus", "crc16-ccitt", "sum16", "sum8", "none"] = Field(
        default="crc16-modbus", description="Integrity check at the end of the frame."
    )
    crc_endian: Literal["big", "little"] = Field(default="little", description="Its byte order.")
    max_length: int = Field(default=256, ge=4, le=4096, description="Longest frame accepted.")


Framing = Annotated[LineFraming | BinaryFraming, Field(discriminator="kind")]


class RegexParse(_Model):
    kind: Literal["regex"] = Field(description="A regular expression with named groups.")
    pattern: str = Field(description="Groups named after points; the whole line must match.")

    @model_validator(mode="after")
    def _compiles(self) -> Self:
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern does not compile: {exc}") from None
        return self


class CsvParse(_Model):
    kind: Literal["csv"] = Field(description="Separated columns.")
    separator: str = Field(default=",", min_length=1, max_length=4, description="Separator.")
    columns: list[str | None] = Field(
        min_length=1, description="Point name per column; null skips a column."
    )
    match: dict[str, str] = Field(
        default_factory=dict, description="Columns that must hold these literal values."
    )


class NmeaParse(_Model):
    kind: Literal["nmea"] = Field(description="NMEA 0183 (GGA, RMC, VTG) with checksums.")


class BinaryParse(_Model):
    kind: Literal["binary"] = Field(description="Fields at fixed offsets in the frame.")


Parse = Annotated[RegexParse | CsvParse | NmeaParse | BinaryParse, Field(discriminator="kind")]

BinaryType = Literal["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32"]


class SerialPoint(_Model):
    type: Literal["float", "int", "bool", "str"] | BinaryType = Field(
        default="float", description="Value type (binary types for binary frames)."
    )
    offset: int | None = Field(default=None, ge=0, description="Byte offset (binary frames).")
    endian: Literal["big", "little"] = Field(default="big", description="Binary byte order.")
    scale: float = Field(default=1.0, description="Value = raw * scale + add.")
    add: float = Field(default=0.0, description="Added after scaling.")
    unit: str | None = Field(default=None, description="Engineering unit.")
    min: float | None = Field(default=None, description="Lower bound; values below are rejected.")
    max: float | None = Field(default=None, description="Upper bound; values above are rejected.")
    deadband: float | None = Field(default=None, ge=0, description="On-change report threshold.")


class SerialProfile(_Model):
    name: str = Field(description="Profile name.")
    vendor: str | None = Field(default=None, description="Maker of the device.")
    description: str | None = Field(default=None, description="What the device is.")
    framing: Framing = Field(description="How frames are cut from the stream.")
    parse: Parse = Field(description="How a frame becomes values.")
    points: dict[str, SerialPoint] = Field(
        default_factory=dict, description="Points the frames carry (NMEA's are built in)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        parse, framing = self.parse, self.framing
        if isinstance(parse, BinaryParse) != isinstance(framing, BinaryFraming):
            raise ValueError("binary parsing needs binary framing and the other way round")
        if isinstance(parse, NmeaParse):
            unknown = set(self.points) - set(NMEA_POINTS)
            if unknown:
                raise ValueError(f"NMEA provides {', '.join(NMEA_POINTS)}; not {sorted(unknown)}")
            return self
        if not self.points:
            raise ValueError("a profile needs at least one point")
        if isinstance(parse, RegexParse):
            groups = set(re.compile(parse.pattern).groupindex)
            missing = set(self.points) - groups
            if missing:
                raise ValueError(f"no named group for point(s) {', '.join(sorted(missing))}")
        if isinstance(parse, CsvParse):
            missing = set(self.points) - {c for c in parse.columns if c}
            if missing:
                raise ValueError(f"no column for point(s) {', '.join(sorted(missing))}")
        for name, point in self.points.items():
            binary_type = point.type not in ("float", "int", "bool", "str")
            if isinstance(parse, BinaryParse) and (point.offset is None or not binary_type):
                raise ValueError(f"point {name}: binary frames need an offset and a binary type")
            if not isinstance(parse, BinaryParse) and (point.offset is not None or binary_type):
                raise ValueError(f"point {name}: offset and binary types are for binary frames")
        return self


class SerialProfileError(ValueError):
    """A serial profile could not be found or is invalid."""


_LOADER = ProfileLoader(SerialProfile, PROFILE_DIR, kind="serial profile", error=SerialProfileError)


def shipped_profiles() -> list[str]:
    return _LOADER.shipped()


def load_serial_profile(ref: str) -> SerialProfile:
    """A shipped profile by name, or a profile file by path."""
    return _LOADER.load(ref)


def nmea_point_defaults() -> dict[str, Any]:
    return dict(NMEA_POINTS)
