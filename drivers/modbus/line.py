"""One physical Modbus connection shared by every device on it.

An RS-485 line (or a TCP connection to a Modbus gateway) carries one request at a time:
all devices on it share one `ModbusLine`, whose lock serialises their requests, polls and
writes alike. The client is connected lazily and dropped when the link fails, so the next
request reconnects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.api import raise_if_cancelling

logger = logging.getLogger(__name__)

Client = AsyncModbusTcpClient | AsyncModbusSerialClient
T = TypeVar("T", bound=ModbusPDU)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


@dataclass(frozen=True, slots=True)
class TcpLink:
    host: str
    port: int

    @property
    def key(self) -> str:
        return f"modbus-tcp://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RtuLink:
    port: str
    baudrate: int
    parity: Literal["N", "E", "O"]
    stopbits: int
    bytesize: int

    @property
    def key(self) -> str:
        return f"modbus-rtu://{self.port}"


Link = TcpLink | RtuLink


class LineError(Exception):
    """The request could not be completed."""


class LinkDown(LineError):  # noqa: N818 - a state, like ConnectionRefused
    """The connection itself (socket, serial port) is not available."""


class NoResponse(LineError):  # noqa: N818
    """The addressed device did not answer within the timeout."""


class CorruptFrame(NoResponse):
    """Bytes came back, but no valid answer (CRC or framing error: noise, wrong baud)."""


class ExceptionCodeError(LineError):
    """The device answered with a Modbus exception code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")
        self.code = code


class ModbusLine:
    """A shared connection: `call` runs one request at a time, under the line's lock."""

    def __init__(self, link: Link, timeout: float) -> None:
        self.link = link
        self.timeout = timeout
        self.lock = asyncio.Lock()
        self.requests = 0
        self.failures = 0
        self.corrupt_frames = 0
        self.connects = 0
        self._queued = 0  # callers waiting for the lock
        self._received = 0  # bytes received on the link, to tell garbage from silence
        self._client: Client | None = None

    @property
    def key(self) -> str:
        return self.link.key

    def _new_client(self) -> Client:
        # reconnect_delay=0: pymodbus must not reconnect on its own; the next call does
        if isinstance(self.link, TcpLink):
            return AsyncModbusTcpClient(
                self.link.host,
                port=self.link.port,
                timeout=self.timeout,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace,
            )
        return AsyncModbusSerialClient(
            self.link.port,
            framer=FramerType.RTU,
            baudrate=self.link.baudrate,
            parity=self.link.parity,
            stopbits=self.link.stopbits,
            bytesize=self.link.bytesize,
            timeout=self.timeout,
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace,
        )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._received += len(data)
        return data

    async def _connected(self) -> Client:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        client = self._new_client()
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:
            client.close()
            raise LinkDown(f"cannot open {self.key}: {exc}") from exc
        if not ok:
            client.close()
            raise LinkDown(f"cannot open {self.key}")
        self._client = client
        self.connects += 1
        return client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def call(self, request: Callable[[Client], Awaitable[T]]) -> T:
        """Run `request` on the connected client; raise `LineError` subclasses on failure."""
        self._queued += 1
        acquired = False
        try:
            async with self.lock:
                self._queued -= 1
                acquired = True
                response = await self._call_locked(request)
        finally:
            if not acquired:  # cancelled or failed while waiting for the line
                self._queued -= 1
        if self._queued:
            # hand the line to the next device before decoding this answer, so that its
            # request travels while this one is worked on
            await asyncio.sleep(0)
        return response

    async def _call_locked(self, request: Callable[[Client], Awaitable[T]]) -> T:
        """`call` for a caller that already holds `lock` (read-modify-write).

        Two transient faults are retried once, immediately: a garbled answer (one bad
        frame on a noisy line is no reason to declare a device offline) and a connection
        that was up but has just been dropped (a Modbus gateway restarting). Both are
        counted.
        """
        was_up = self._client is not None and self._client.connected
        try:
            return await self._attempt(request)
        except CorruptFrame:
            self.corrupt_frames += 1
            logger.debug("%s: garbled answer, repeating the request once", self.key)
        except LinkDown:
            if not was_up:
                raise
            logger.debug("%s: connection dropped, reconnecting once", self.key)
        try:
            return await self._attempt(request)
        except CorruptFrame:
            self.corrupt_frames += 1
            raise

    async def _attempt(self, request: Callable[[Client], Awaitable[T]]) -> T:
        client = self._client
        if client is None or not client.connected:
            client = await self._connected()
        self.requests += 1
        received = self._received
        try:
            response = await request(client)
            # pymodbus awaits answers with asyncio.wait_for, which on Python 3.11 can
            # swallow a cancellation arriving with the answer; honour it here
            raise_if_cancelling()
        except ConnectionException as exc:
            self.failures += 1
            self._drop()
            raise LinkDown(f"{self.key}: {exc}") from exc
        except ModbusIOException as exc:
            self.failures += 1
            if not client.connected:
                self._drop()
                raise LinkDown(f"{self.key}: connection lost") from exc
            if self._received > received:
                raise CorruptFrame(
                    f"garbled answer ({self._received - received} bytes, no valid frame)"
                ) from exc
            raise NoResponse(f"no response within {self.timeout:g}s") from exc
        if isinstance(response, ExceptionResponse) or response.isError():
            code = getattr(response, "exception_code", 0)
            if code in (10, 11):  # a TCP-to-RTU gateway could not reach the device
                raise NoResponse(EXCEPTION_NAMES[code])
            raise ExceptionCodeError(code)
        return response

    async def aclose(self) -> None:
        self._drop()
