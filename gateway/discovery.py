"""Finding nodes on the LAN with mDNS/DNS-SD (zeroconf): advertise and browse.

A node advertises ``<node id>._cityneuron._tcp.local.`` with its health/metrics port and
TXT records: node id, name, version, driver types and capabilities. Never secrets: no
broker address, no credentials, nothing from the config beyond identity.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from gateway.kernel.component import Ready

logger = logging.getLogger(__name__)

SERVICE = "_cityneuron._tcp.local."


def _addresses(interfaces: Sequence[str] | None) -> list[bytes]:
    if interfaces:
        return [socket.inet_aton(a) for a in interfaces]
    try:
        host_ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        host_ip = "127.0.0.1"
    return [socket.inet_aton(host_ip)]


@dataclass(frozen=True, slots=True)
class Announcement:
    """What a node tells the LAN about itself: identity and capabilities, never secrets."""

    node: str
    name: str
    version: str
    port: int  # of the health and metrics endpoint, 0 without one
    drivers: tuple[str, ...] = ()
    caps: tuple[str, ...] = ()

    def properties(self) -> dict[str, str]:
        """The TXT records."""
        return {
            "node": self.node,
            "name": self.name[:100],
            "version": self.version,
            "drivers": ",".join(sorted(set(self.drivers))),
            "caps": ",".join(self.caps),
        }


class Advertiser:
    """Component announcing the node while it runs (and withdrawing it when it stops)."""

    name = "discovery"

    def __init__(self, announcement: Announcement, interfaces: Sequence[str] | None = None) -> None:
        self.announcement = announcement
        self.interfaces = list(interfaces) if interfaces else None
        self.info: AsyncServiceInfo | None = None

    async def run(self, ready: Ready) -> None:
        a = self.announcement
        self.info = AsyncServiceInfo(
            SERVICE,
            f"{a.node}.{SERVICE}",
            port=a.port,
            properties=a.properties(),
            addresses=_addresses(self.interfaces),
            server=f"{a.node}.local.",
        )
        azc = AsyncZeroconf(
            interfaces=self.interfaces or _all_interfaces(), ip_version=IPVersion.V4Only
        )
        try:
            task = await azc.async_register_service(self.info, allow_name_change=True)
            await task
            logger.info("advertised as %s on the LAN", self.info.name)
            ready()
            await asyncio.Event().wait()
        finally:
            try:
                await azc.async_unregister_all_services()
            finally:
                await azc.async_close()


def _all_interfaces() -> Any:
    from zeroconf import InterfaceChoice  # noqa: PLC0415

    return InterfaceChoice.All


@dataclass(frozen=True, slots=True)
class FoundNode:
    node: str
    name: str
    version: str
    drivers: str
    caps: str
    addresses: tuple[str, ...]
    port: int


async def browse(listen: float = 3.0, interfaces: Sequence[str] | None = None) -> list[FoundNode]:
    """Nodes answering on the LAN within `listen` seconds."""
    azc = AsyncZeroconf(
        interfaces=list(interfaces) if interfaces else _all_interfaces(),
        ip_version=IPVersion.V4Only,
    )
    names: set[str] = set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        del zeroconf, service_type
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            names.add(name)

    browser = AsyncServiceBrowser(azc.zeroconf, SERVICE, handlers=[on_change])
    found: list[FoundNode] = []
    try:
        await asyncio.sleep(listen)
        for name in sorted(names):
            info = AsyncServiceInfo(SERVICE, name)
            if not await info.async_request(azc.zeroconf, 1000):
                continue
            props = {
                k.decode(): (v or b"").decode(errors="replace") for k, v in info.properties.items()
            }
            found.append(
                FoundNode(
                    node=props.get("node", name.split(".")[0]),
                    name=props.get("name", ""),
                    version=props.get("version", "?"),
                    drivers=props.get("drivers", ""),
                    caps=props.get("caps", ""),
                    addresses=tuple(info.parsed_addresses()),
                    port=info.port or 0,
                )
            )
    finally:
        await browser.async_cancel()
        await azc.async_close()
    return found
