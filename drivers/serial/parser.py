"""Turning one frame into point values — or into a counted rejection, never an exception."""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from typing import Any

from drivers.api import Value
from drivers.serial import nmea
from drivers.serial.profile import (
    NMEA_POINTS,
    BinaryParse,
    CsvParse,
    LineFraming,
    NmeaParse,
    RegexParse,
    SerialPoint,
    SerialProfile,
)

_BINARY = {
    "uint8": "B",
    "int8": "b",
    "uint16": "H",
    "int16": "h",
    "uint32": "I",
    "int32": "i",
    "float32": "f",
}
_TRUE = {"1", "true", "on", "yes", "y", "t"}
_FALSE = {"0", "false", "off", "no", "n", "f"}


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame that did not yield values, and why (a short stable word)."""

    reason: str  # format | checksum | fields | range | encoding | unsupported
    detail: str = ""


class FrameParser:
    """Parses the frames of one profile."""

    def __init__(self, profile: SerialProfile) -> None:
        self.profile = profile
        self.parse_spec = profile.parse
        self.encoding = (
            profile.framing.encoding if isinstance(profile.framing, LineFraming) else "ascii"
        )
        self._regex = (
            re.compile(self.parse_spec.pattern) if isinstance(self.parse_spec, RegexParse) else None
        )
        if isinstance(self.parse_spec, NmeaParse):
            wanted = set(profile.points) or set(NMEA_POINTS)
            self.points = {
                name: profile.points.get(name)
                or SerialPoint(
                    type="bool" if name == "fix_valid" else "float",
                    unit=unit,
                    min=lo,
                    max=hi,
                )
                for name, (unit, lo, hi) in NMEA_POINTS.items()
                if name in wanted
            }
        else:
            self.points = dict(profile.points)

    def parse(self, frame: bytes) -> dict[str, Value] | Rejected:
        spec = self.parse_spec
        if isinstance(spec, BinaryParse):
            return self._binary(frame)
        if isinstance(spec, NmeaParse):
            return self._nmea(frame)
        try:
            text = frame.decode(self.encoding).strip()
        except UnicodeDecodeError:
            return Rejected("encoding")
        if isinstance(spec, CsvParse):
            return self._csv(spec, text)
        match = self._regex.fullmatch(text) if self._regex is not None else None
        if match is None:
            return Rejected("format")
        return self._convert({n: match.group(n) for n in self.points})

    def _csv(self, spec: CsvParse, text: str) -> dict[str, Value] | Rejected:
        cells = text.split(spec.separator)
        if len(cells) != len(spec.columns):
            return Rejected("fields", f"{len(cells)} columns, expected {len(spec.columns)}")
        row = {c: v.strip() for c, v in zip(spec.columns, cells, strict=True) if c}
        if any(row.get(col) != want for col, want in spec.match.items()):
            return Rejected("format")
        return self._convert({n: row[n] for n in self.points})

    def _nmea(self, frame: bytes) -> dict[str, Value] | Rejected:
        result = nmea.parse(frame)
        if isinstance(result, nmea.NmeaError):
            return Rejected(result.reason, result.detail)
        values = dict(result.values)
        if "valid" in values:
            values["fix_valid"] = values.pop("valid")
        if values.get("fix_quality") == 0:
            values["fix_valid"] = False
        out = {k: v for k, v in values.items() if k in self.points and v is not None}
        return self._checked(out)

    def _binary(self, frame: bytes) -> dict[str, Value] | Rejected:
        raw: dict[str, Any] = {}
        for name, point in self.points.items():
            fmt = ("<" if point.endian == "little" else ">") + _BINARY[point.type]
            offset = point.offset or 0
            if offset + struct.calcsize(fmt) > len(frame):
                return Rejected("fields", f"frame of {len(frame)} bytes too short for {name}")
            raw[name] = struct.unpack_from(fmt, frame, offset)[0]
        return self._convert(raw)

    def _convert(self, raw: dict[str, Any]) -> dict[str, Value] | Rejected:
        out: dict[str, Value] = {}
        for name, text in raw.items():
            point = self.points[name]
            try:
                out[name] = _typed(point, text)
            except ValueError as exc:
                return Rejected("format", f"{name}: {exc}")
        return self._checked(out)

    def _checked(self, values: dict[str, Value]) -> dict[str, Value] | Rejected:
        for name, value in values.items():
            point = self.points[name]
            if isinstance(value, float) and not math.isfinite(value):
                return Rejected("range", f"{name} is not a finite number")
            if isinstance(value, int | float) and not isinstance(value, bool):
                if point.min is not None and value < point.min:
                    return Rejected("range", f"{name}={value} below {point.min:g}")
                if point.max is not None and value > point.max:
                    return Rejected("range", f"{name}={value} above {point.max:g}")
        return values


def _typed(point: SerialPoint, raw: Any) -> Value:
    kind = point.type
    if kind == "str":
        return str(raw)
    if kind == "bool":
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"{raw!r} is not a boolean")
    if kind == "int":
        value: float = int(str(raw).strip())
    elif kind == "float":
        value = float(str(raw).strip())
    else:  # binary types arrive as numbers already
        value = raw
    if point.scale != 1.0 or point.add != 0.0:
        return round(value * point.scale + point.add, 9)
    return value
