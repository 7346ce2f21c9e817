"""sd_notify over a real unix datagram socket, as systemd provides it."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from gateway.app import Gateway
from gateway.config import HttpSection, NodeConfig, NodeSection
from gateway.systemd import SystemdNotifier


async def test_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        listener.setblocking(False)
        config = NodeConfig(
            node=NodeSection(id="n1", data_dir=tmp_path), http=HttpSection(enabled=False)
        )
        gw = Gateway(config)
        gw.systemd = SystemdNotifier(
            gw.state, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
        )
        gw.components.insert(0, gw.systemd)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(gw.run(handle_signals=False), name="gateway")
            await asyncio.wait_for(gw.ready.wait(), 10)
            await asyncio.sleep(0.35)  # watchdog every 0.1 s
            gw.request_stop()
        got = []
        while True:
            try:
                got.append(listener.recv(4096).decode())
            except BlockingIOError:
                break
    assert got[0] == "READY=1\nSTATUS=node n1 running"
    assert got.count("WATCHDOG=1") >= 3
    assert got[-1] == "STOPPING=1"


def test_not_under_systemd_it_stays_out_of_the_way(tmp_path: Path) -> None:
    assert "NOTIFY_SOCKET" not in os.environ  # the tests do not run under systemd
    gw = Gateway(NodeConfig(node=NodeSection(id="n1", data_dir=tmp_path)))
    assert "systemd" not in [c.name for c in gw.components]
    assert not SystemdNotifier(gw, env={"WATCHDOG_USEC": "1000"}).enabled
