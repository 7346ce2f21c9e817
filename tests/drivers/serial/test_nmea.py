from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.serial import nmea

# real sentences from receivers' documentation
GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
VTG = b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48"


def test_gga() -> None:
    s = nmea.parse(GGA)
    assert isinstance(s, nmea.Sentence)
    assert s.kind == "GGA"
    assert s.values["lat"] == pytest.approx(48.1173)
    assert s.values["lon"] == pytest.approx(11.516667, abs=1e-6)
    assert s.values["fix_quality"] == 1
    assert s.values["satellites"] == 8
    assert s.values["alt"] == 545.4
    assert s.values["utc"] == "12:35:19.000"


def test_rmc_and_vtg_speed_in_kmh() -> None:
    rmc = nmea.parse(RMC)
    assert isinstance(rmc, nmea.Sentence)
    assert rmc.values["valid"] is True
    assert rmc.values["speed"] == pytest.approx(22.4 * 1.852, abs=0.05)
    assert rmc.values["heading"] == 84.4
    vtg = nmea.parse(VTG)
    assert isinstance(vtg, nmea.Sentence)
    assert vtg.values == {"heading": 54.7, "speed": 10.2}


def test_southern_and_western_hemispheres() -> None:
    line = nmea.sentence("GPGGA,000000,3002.0760,S,05113.0620,W,1,09,0.9,31.5,M,4.1,M,,")
    s = nmea.parse(line.strip())
    assert isinstance(s, nmea.Sentence)
    assert s.values["lat"] == pytest.approx(-30.0346)
    assert s.values["lon"] == pytest.approx(-51.217700, abs=1e-6)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (GGA[:-2] + b"00", "checksum"),
        (b"GPGGA,123519", "format"),
        (b"$GPGGA,1*" + b"%02X" % nmea.checksum(b"GPGGA,1"), "fields"),
        (
            nmea.sentence("GPGGA,123519,9107.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,").strip(),
            "range",
        ),
        (
            nmea.sentence("GPGGA,123519,4807.038,N,01161.000,E,1,08,0.9,545.4,M,46.9,M,,").strip(),
            "range",
        ),
        (
            nmea.sentence("GPRMC,123519,X,4807.038,N,01131.000,E,022.4,084.4,230394,,").strip(),
            "range",
        ),
        (nmea.sentence("GPGSV,3,1,11,03,03,111,00").strip(), "unsupported"),
    ],
)
def test_rejections_name_their_reason(line: bytes, reason: str) -> None:
    result = nmea.parse(line)
    assert isinstance(result, nmea.NmeaError)
    assert result.reason == reason


def test_no_fix_has_no_position() -> None:
    s = nmea.parse(nmea.sentence("GPGGA,123519,,,,,0,00,,,M,,M,,").strip())
    assert isinstance(s, nmea.Sentence)
    assert s.values["fix_quality"] == 0
    assert "lat" not in s.values


@given(st.binary(max_size=120))
def test_any_bytes_parse_or_are_rejected(data: bytes) -> None:
    result = nmea.parse(data)
    assert isinstance(result, nmea.Sentence | nmea.NmeaError)


body_chars = st.text(alphabet="0123456789.,NSEWAVMTK-", max_size=80)


@given(st.sampled_from(["GPGGA", "GPRMC", "GPVTG", "GNGGA"]), body_chars)
def test_well_formed_garbage_never_yields_out_of_range_values(kind: str, body: str) -> None:
    result = nmea.parse(nmea.sentence(f"{kind},{body}").strip())
    if isinstance(result, nmea.Sentence):
        v = result.values
        assert -90 <= v.get("lat", 0) <= 90
        assert -180 <= v.get("lon", 0) <= 180
        assert 0 <= v.get("speed", 0) <= 4000
        assert 0 <= v.get("heading", 0) <= 360
        for value in v.values():
            assert not (isinstance(value, float) and not math.isfinite(value))
