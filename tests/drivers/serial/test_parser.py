from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.driver import make_framer
from drivers.serial.framing import checksum
from drivers.serial.parser import FrameParser, Rejected
from drivers.serial.profile import (
    SerialProfile,
    SerialProfileError,
    load_serial_profile,
    shipped_profiles,
)


def parser(name: str) -> FrameParser:
    return FrameParser(load_serial_profile(name))


def test_regex_lines() -> None:
    p = parser("rain_gauge")
    assert p.parse(b"RAIN,total=12.40,rate=0.20,temp=11.5") == {
        "rain_total": 12.4,
        "rain_rate": 0.2,
        "temperature": 11.5,
    }
    assert p.parse(b"RAIN,total=12.40,rate=0.20") == Rejected("format")
    assert p.parse(b"RAIN,total=12.40,rate=999.20,temp=11.5") == Rejected(
        "range", "rain_rate=999.2 above 500"
    )
    assert p.parse(b"\xff\xfe") == Rejected("encoding")


def test_csv_lines() -> None:
    p = parser("weather_csv")
    assert p.parse(b"W,21.5,55,1013.2,3.4") == {
        "temperature": 21.5,
        "humidity": 55.0,
        "pressure": 1013.2,
        "wind": 3.4,
    }
    assert p.parse(b"X,21.5,55,1013.2,3.4") == Rejected("format")
    assert isinstance(p.parse(b"W,21.5,55"), Rejected)
    assert p.parse(b"W,abc,55,1013.2,3.4").reason == "format"  # type: ignore[union-attr]
    assert p.parse(b"W,nan,55,1013.2,3.4").reason == "range"  # type: ignore[union-attr]


def pms_frame(pm25: int) -> bytes:
    words = [1, 2, 3, pm25 // 2, pm25, pm25 + 10] + [0] * 7
    body = b"\x42\x4d" + struct.pack(">H", 28) + struct.pack(">13H", *words)
    return body + struct.pack(">H", checksum("sum16", body))


def test_binary_frames() -> None:
    profile = load_serial_profile("pms5003")
    framer = make_framer(profile)
    frames = framer.feed(b"\x00\x42" + pms_frame(35) + pms_frame(40))
    assert len(frames) == 2
    assert FrameParser(profile).parse(frames[0]) == {"pm1_0": 17, "pm2_5": 35, "pm10": 45}


def test_nmea_profile_points() -> None:
    p = parser("nmea_gps")
    values = p.parse(b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47")
    assert isinstance(values, dict)
    assert values["fix_quality"] == 1
    assert p.points["lat"].unit == "deg"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "framing: {kind: line}\nparse: {kind: regex, pattern: '(?P<a>1'}\npoints: {a: {}}",
            "pattern does not compile",
        ),
        (
            "framing: {kind: line}\nparse: {kind: regex, pattern: 'x'}\npoints: {a: {}}",
            "no named group for point(s) a",
        ),
        (
            "framing: {kind: line}\nparse: {kind: binary}\npoints: {a: {type: uint8, offset: 1}}",
            "binary parsing needs binary framing",
        ),
        (
            "framing: {kind: line}\nparse: {kind: csv, columns: [b]}\npoints: {a: {}}",
            "no column for point(s) a",
        ),
        ("framing: {kind: line}\nparse: {kind: nmea}\npoints: {depth: {}}", "NMEA provides"),
    ],
)
def test_bad_profiles(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: p\n" + text + "\n", encoding="utf-8")
    with pytest.raises(SerialProfileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_serial_profile(str(path))


@settings()
@given(st.sampled_from(shipped_profiles()), st.lists(st.binary(max_size=200), max_size=10))
def test_arbitrary_bytes_through_framer_and_parser(name: str, chunks: list[bytes]) -> None:
    """No exception escapes, and whatever comes out respects the profile's bounds."""
    profile: SerialProfile = load_serial_profile(name)
    framer, p = make_framer(profile), FrameParser(profile)
    for chunk in chunks:
        for frame in framer.feed(chunk):
            values = p.parse(frame)
            if isinstance(values, Rejected):
                continue
            for point, value in values.items():
                spec = p.points[point]
                if isinstance(value, float):
                    assert math.isfinite(value)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    assert spec.min is None or value >= spec.min
                    assert spec.max is None or value <= spec.max


@given(st.text(max_size=80))
def test_arbitrary_text_lines(text: str) -> None:
    for name in ("rain_gauge", "weather_csv", "nmea_gps"):
        p = parser(name)
        values = p.parse(text.encode("utf-8", errors="replace"))
        assert isinstance(values, dict | Rejected)
