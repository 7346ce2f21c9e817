"""Cutting a serial byte stream into frames, whatever arrives.

Framers are sans-IO: `feed(bytes)` returns the complete frames found so far and keeps the
rest. They never raise on bad input; what they throw away is counted in `discarded`
(bytes) and `rejected` (frames failing their length or check), so noise, a wrong baud
rate or a half-plugged connector shows up as numbers instead of as wrong values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

CrcKind = Literal["crc16-modbus", "crc16-ccitt", "sum16", "sum8", "none"]


def crc16_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def checksum(kind: CrcKind, data: bytes) -> int:
    if kind == "crc16-modbus":
        return crc16_modbus(data)
    if kind == "crc16-ccitt":
        return crc16_ccitt(data)
    if kind == "sum16":
        return sum(data) & 0xFFFF
    if kind == "sum8":
        return sum(data) & 0xFF
    return 0


@dataclass
class FramerStats:
    frames: int = 0
    discarded: int = 0  # bytes thrown away (noise between frames, overlong lines)
    rejected: int = 0  # frames that failed a length or integrity check


@dataclass
class LineFramer:
    """Frames delimited by a newline (CR, LF or CRLF); overlong lines are dropped."""

    max_length: int = 512
    stats: FramerStats = field(default_factory=FramerStats)
    _buf: bytearray = field(default_factory=bytearray)
    _overlong: bool = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        self._buf += data
        while True:
            cut = _first_eol(self._buf)
            if cut < 0:
                if len(self._buf) > self.max_length:
                    # no end in sight: drop what we have and skip to the next line end
                    self.stats.discarded += len(self._buf)
                    self._buf.clear()
                    self._overlong = True
                return out
            line = bytes(self._buf[:cut])
            del self._buf[: cut + 1]
            if self._overlong:
                self._overlong = False
                self.stats.discarded += len(line) + 1
                continue
            if not line:
                continue  # the LF of a CRLF, or an empty line
            if len(line) > self.max_length:
                self.stats.discarded += len(line) + 1
                self.stats.rejected += 1
                continue
            self.stats.frames += 1
            out.append(line)


def _first_eol(buf: bytearray) -> int:
    cr = buf.find(b"\r")
    lf = buf.find(b"\n")
    if cr < 0:
        return lf
    if lf < 0:
        return cr
    return min(cr, lf)


@dataclass
class BinaryFramer:
    """Frames of the form <start bytes> ... <length field> ... <payload> <checksum>.

    `length_offset` is where the length field sits (from the frame start), `length_size`
    its width (1 or 2 bytes, big or little endian), and `length_adjust` what to add to its
    value to get the whole frame length. The checksum (`crc`, over every byte before it)
    sits at the end of the frame. A frame whose check fails is rejected and the search
    resumes one byte after its start, so a false start byte in noise cannot swallow a real
    frame.
    """

    start: bytes
    length_offset: int
    length_size: Literal[1, 2] = 1
    length_endian: Literal["big", "little"] = "big"
    length_adjust: int = 0
    crc: CrcKind = "crc16-modbus"
    crc_endian: Literal["big", "little"] = "little"
    min_length: int = 4
    max_length: int = 256
    stats: FramerStats = field(default_factory=FramerStats)
    _buf: bytearray = field(default_factory=bytearray)

    @property
    def crc_size(self) -> int:
        return {"none": 0, "sum8": 1}.get(self.crc, 2)

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        self._buf += data
        header = self.length_offset + self.length_size
        while True:
            at = self._buf.find(self.start)
            if at < 0:
                # keep a tail that could be the beginning of a start sequence
                keep = len(self.start) - 1
                drop = max(0, len(self._buf) - keep)
                self.stats.discarded += drop
                del self._buf[:drop]
                return out
            if at:
                self.stats.discarded += at
                del self._buf[:at]
            if len(self._buf) < header:
                return out
            raw_len = int.from_bytes(self._buf[self.length_offset : header], self.length_endian)
            total = raw_len + self.length_adjust
            if not self.min_length <= total <= self.max_length or total < header + self.crc_size:
                self._reject()
                continue
            if len(self._buf) < total:
                return out
            frame = bytes(self._buf[:total])
            if not self._check(frame):
                self._reject()
                continue
            del self._buf[:total]
            self.stats.frames += 1
            out.append(frame)

    def _reject(self) -> None:
        self.stats.rejected += 1
        self.stats.discarded += 1
        del self._buf[:1]

    def _check(self, frame: bytes) -> bool:
        n = self.crc_size
        if n == 0:
            return True
        body, tail = frame[:-n], frame[-n:]
        return checksum(self.crc, body) == int.from_bytes(tail, self.crc_endian)

    def pending(self) -> int:
        return len(self._buf)
