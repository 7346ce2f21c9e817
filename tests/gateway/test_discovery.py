"""A second process finds the node with zeroconf on loopback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from firmware_sim.broker import free_port
from gateway.app import Gateway
from gateway.config import (
    DiscoverySection,
    HttpSection,
    MqttSection,
    NodeConfig,
    NodeSection,
    TlsSection,
)

ROOT = Path(__file__).resolve().parents[2]


async def test_the_node_is_found_by_another_process_and_tells_no_secrets(
    tmp_path: Path,
) -> None:
    http_port = free_port()
    config = NodeConfig(
        node=NodeSection(id="lamp-17", name="Lamp post 17", data_dir=tmp_path),
        mqtt=MqttSection(
            host="127.0.0.1",
            port=free_port(),
            tls=TlsSection(enabled=False),
            username="lamp-17",
            password="s3cret-password",
        ),
        http=HttpSection(port=http_port),
        discovery=DiscoverySection(interfaces=["127.0.0.1"]),
    )
    gw = Gateway(config)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(gw.run(handle_signals=False), name="gateway")
        await asyncio.wait_for(gw.ready.wait(), 10)
        found = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "discover",
                "--interface",
                "127.0.0.1",
                "--timeout",
                "2",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        gw.request_stop()
    assert found.returncode == 0, found.stderr
    (line,) = [ln for ln in found.stdout.splitlines() if ln.startswith("lamp-17")]
    assert f"127.0.0.1:{http_port}" in line
    assert "v0.1.0" in line
    assert "uplink,metrics" in line
    assert "Lamp post 17" in line
    assert "1 node(s) found" in found.stderr
    # nothing about the broker or its credentials is announced
    assert config.mqtt is not None
    assert "s3cret" not in found.stdout
    assert str(config.mqtt.port) not in found.stdout
