"""A simulated ACME SLM-100 on a local TCP port (for tests and demos)."""

from __future__ import annotations

import asyncio
import math
import time


class MeterSim:
    """Answers MEAS? with slowly varying sound levels."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                if line.strip() != b"MEAS?":
                    writer.write(b"ERR\n")
                    continue
                self.requests += 1
                level = 55 + 8 * math.sin(time.monotonic() / 5)
                writer.write(f"LAeq={level:.1f};LAmax={level + 6:.1f};STATUS=OK\n".encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> MeterSim:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
