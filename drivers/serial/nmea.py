"""NMEA 0183: sentence checksums and the GGA, RMC and VTG sentences of GPS receivers.

`parse` never raises: it returns a `Sentence` or an `NmeaError` naming what was wrong, so
the caller can count rejections by reason. Values outside their physical range are
rejected, never passed on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

_SENTENCE = re.compile(rb"^\$([A-Z]{2})([A-Z]{3}),([\x20-\x7e]*)\*([0-9A-Fa-f]{2})$")


@dataclass(frozen=True, slots=True)
class NmeaError:
    """Why a line was not accepted (`reason` is one of a few stable words)."""

    reason: str  # "format" | "checksum" | "fields" | "range" | "unsupported"
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Sentence:
    talker: str
    kind: str  # GGA, RMC, VTG
    values: dict[str, Any] = field(default_factory=dict)


def checksum(body: bytes) -> int:
    value = 0
    for byte in body:
        value ^= byte
    return value


def sentence(body: str) -> bytes:
    """A complete sentence (with $, checksum and CRLF) for `body` like 'GPGGA,...'."""
    raw = body.encode("ascii")
    return b"$" + raw + b"*%02X\r\n" % checksum(raw)


def _coord(text: str, hemi: str, degree_digits: int, limit: float) -> float:
    if len(text) < degree_digits + 2 or hemi not in ("N", "S", "E", "W"):
        raise ValueError("coordinate")
    degrees = int(text[:degree_digits])
    minutes = float(text[degree_digits:])
    if not 0 <= minutes < 60:
        raise ValueError("minutes")
    value = degrees + minutes / 60
    if value > limit:
        raise ValueError("range")
    value = round(value, 7)  # 1e-7 degrees is about 1 cm: finer digits are noise
    return -value if hemi in ("S", "W") else value


def _opt_float(text: str) -> float | None:
    if not text:
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not finite")
    return value


def _utc(text: str) -> str | None:
    if not text:
        return None
    if not re.fullmatch(r"\d{6}(\.\d+)?", text):
        raise ValueError("time")
    hh, mm, ss = int(text[0:2]), int(text[2:4]), float(text[4:])
    if hh > 23 or mm > 59 or ss >= 61:
        raise ValueError("time range")
    return f"{hh:02d}:{mm:02d}:{ss:06.3f}"


def _gga(f: list[str]) -> dict[str, Any]:
    if len(f) < 14:
        raise IndexError
    quality = int(f[5]) if f[5] else 0
    if not 0 <= quality <= 8:
        raise ValueError("fix quality")
    out: dict[str, Any] = {"utc": _utc(f[0]), "fix_quality": quality}
    if quality > 0:
        out["lat"] = _coord(f[1], f[2], 2, 90)
        out["lon"] = _coord(f[3], f[4], 3, 180)
    sats = int(f[6]) if f[6] else None
    if sats is not None and not 0 <= sats <= 99:
        raise ValueError("satellites")
    out["satellites"] = sats
    out["hdop"] = _opt_float(f[7])
    altitude = _opt_float(f[8])
    if altitude is not None and not -1000 <= altitude <= 20000:
        raise ValueError("altitude")
    out["alt"] = altitude
    return out


def _rmc(f: list[str]) -> dict[str, Any]:
    if len(f) < 9:
        raise IndexError
    if f[1] not in ("A", "V"):
        raise ValueError("status")
    out: dict[str, Any] = {"utc": _utc(f[0]), "valid": f[1] == "A"}
    if f[1] == "A":
        out["lat"] = _coord(f[2], f[3], 2, 90)
        out["lon"] = _coord(f[4], f[5], 3, 180)
    knots = _opt_float(f[6])
    if knots is not None:
        if not 0 <= knots <= 2000:
            raise ValueError("speed")
        out["speed"] = round(knots * 1.852, 1)  # km/h, at the resolution VTG gives
    course = _opt_float(f[7])
    if course is not None:
        if not 0 <= course <= 360:
            raise ValueError("course")
        out["heading"] = course
    if f[8] and not re.fullmatch(r"\d{6}", f[8]):
        raise ValueError("date")
    return out


def _vtg(f: list[str]) -> dict[str, Any]:
    if len(f) < 8:
        raise IndexError
    out: dict[str, Any] = {}
    course = _opt_float(f[0])
    if course is not None:
        if not 0 <= course <= 360:
            raise ValueError("course")
        out["heading"] = course
    kmh = _opt_float(f[6])
    if kmh is not None:
        if not 0 <= kmh <= 4000:
            raise ValueError("speed")
        out["speed"] = kmh
    return out


_PARSERS = {"GGA": _gga, "RMC": _rmc, "VTG": _vtg}


def parse(line: bytes) -> Sentence | NmeaError:
    """Parse one line (without CR/LF); never raises."""
    match = _SENTENCE.match(line.strip())
    if match is None:
        return NmeaError("format")
    talker, kind, body, given = match.groups()
    if checksum(talker + kind + b"," + body) != int(given, 16):
        return NmeaError("checksum")
    parser = _PARSERS.get(kind.decode())
    if parser is None:
        return NmeaError("unsupported", kind.decode())
    try:
        values = parser(body.decode("ascii").split(","))
    except IndexError:
        return NmeaError("fields", kind.decode())
    except ValueError as exc:
        return NmeaError("range", f"{kind.decode()}: {exc}")
    return Sentence(talker.decode(), kind.decode(), values)
