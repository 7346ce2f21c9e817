from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from drivers.serial.framing import BinaryFramer, LineFramer, checksum, crc16_ccitt, crc16_modbus


def test_crc_reference_values() -> None:
    # standard check values for the ASCII string "123456789"
    assert crc16_modbus(b"123456789") == 0x4B37
    assert crc16_ccitt(b"123456789") == 0x29B1
    assert checksum("sum16", b"\x01\x02\xff") == 0x102


def test_lines_with_any_line_ending_and_split_feeds() -> None:
    f = LineFramer()
    assert f.feed(b"one\r\ntwo\nthr") == [b"one", b"two"]
    assert f.feed(b"ee\rfour\r") == [b"three", b"four"]
    assert f.feed(b"\n\n\n") == []
    assert f.stats.frames == 4


def test_overlong_lines_are_dropped_and_counted() -> None:
    f = LineFramer(max_length=10)
    out = f.feed(b"x" * 25 + b"\nok\n")
    assert out == [b"ok"]
    assert f.stats.discarded == 26


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(8, 64))
def test_line_framer_takes_any_bytes(chunks: list[bytes], max_length: int) -> None:
    f = LineFramer(max_length=max_length)
    for chunk in chunks:
        for line in f.feed(chunk):
            assert line
            assert b"\r" not in line
            assert b"\n" not in line
            assert len(line) <= max_length


def frame(payload: bytes) -> bytes:
    """AA 55 <len> <payload> <crc16-modbus, little endian>; len counts the whole frame."""
    body = b"\xaa\x55" + bytes([len(payload) + 5]) + payload
    return body + struct.pack("<H", crc16_modbus(body))


def framer() -> BinaryFramer:
    return BinaryFramer(start=b"\xaa\x55", length_offset=2, length_size=1, max_length=64)


def test_binary_frames_are_found_in_noise() -> None:
    f = framer()
    a, b = frame(b"\x01\x02"), frame(b"\x03\x04\x05")
    noise = b"\x00\xaa\x13\xaa\x55\xff"  # including a false start sequence
    assert f.feed(noise + a + b"\x99" + b[:4]) == [a]
    assert f.feed(b[4:]) == [b]
    assert f.stats.rejected >= 1
    assert f.stats.discarded > 0


def test_a_bad_checksum_is_rejected_and_the_next_frame_still_found() -> None:
    f = framer()
    bad = bytearray(frame(b"\x10\x20"))
    bad[-1] ^= 0xFF
    good = frame(b"\x30")
    assert f.feed(bytes(bad) + good) == [good]
    assert f.stats.rejected == 1


@given(st.lists(st.binary(max_size=100), max_size=20))
def test_binary_framer_takes_any_bytes_and_only_emits_checked_frames(
    chunks: list[bytes],
) -> None:
    f = framer()
    for chunk in chunks:
        for out in f.feed(chunk):
            assert out.startswith(b"\xaa\x55")
            assert len(out) == out[2]
            assert crc16_modbus(out[:-2]) == struct.unpack("<H", out[-2:])[0]


@given(st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=6), st.binary(max_size=40))
def test_valid_frames_survive_any_surrounding_noise(payloads: list[bytes], noise: bytes) -> None:
    f = framer()
    frames = [frame(p) for p in payloads]
    got = f.feed(noise + b"".join(frames))
    # noise can only cost frames if it happens to contain a valid frame of its own
    assert got[-len(frames) :] == frames
