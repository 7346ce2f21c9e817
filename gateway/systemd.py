"""systemd notification: READY when the node runs, WATCHDOG while it is healthy.

Active only under systemd (NOTIFY_SOCKET set, as with ``Type=notify``). The watchdog is
kicked at half the unit's ``WatchdogSec`` from the event loop itself, and only while no
core component has given up, so a hung loop or a broken node gets restarted by systemd
(a failing driver is the node's to restart, not systemd's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

from gateway.kernel.component import Ready
from gateway.nodestate import Readiness

logger = logging.getLogger(__name__)


class SystemdNotifier:
    """Component speaking the sd_notify protocol."""

    name = "systemd"

    def __init__(self, state: Readiness, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.state = state
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self.sent: list[str] = []

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def _send(self, sock: socket.socket, message: str) -> None:
        try:
            sock.sendto(message.encode(), self.address)
            self.sent.append(message)
        except OSError as exc:
            logger.debug("sd_notify %r failed: %s", message, exc)

    def _healthy(self) -> bool:
        return not self.state.has_failed()

    async def run(self, ready: Ready) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            ready()
            await self.state.wait_ready()
            self._send(sock, f"READY=1\nSTATUS=node {self.state.node_id} running")
            while not self.state.stopping_requested():
                if self.watchdog is None:
                    await self.state.wait_stopping()
                    break
                if self._healthy():
                    self._send(sock, "WATCHDOG=1")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.watchdog):
                        await self.state.wait_stopping()
            self._send(sock, "STOPPING=1")
            await asyncio.Event().wait()  # until the gateway cancels us, last
