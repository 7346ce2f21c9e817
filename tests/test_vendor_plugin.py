"""The example vendor plugin, installed as its own package: found, conformant, running."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from acme_noise.driver import AcmeSlmDriver
from acme_noise.sim import MeterSim

from drivers.api import DriverConformance
from firmware_sim.broker import free_port
from gateway.app import Gateway
from gateway.config import load_config
from gateway.kernel.records import Reading
from gateway.plugins import load_drivers

ROOT = Path(__file__).resolve().parents[1]


class TestAcmeConformance(DriverConformance):
    driver = AcmeSlmDriver

    @asynccontextmanager
    async def device(self) -> AsyncIterator[dict[str, Any]]:
        async with MeterSim() as sim:
            yield {
                "type": "acme_slm",
                "id": "slm-1",
                "host": sim.host,
                "port": sim.port,
                "interval": "100ms",
            }

    def unreachable_config(self) -> dict[str, Any]:
        return {
            "type": "acme_slm",
            "id": "slm-1",
            "host": "127.0.0.1",
            "port": free_port(),
            "interval": "100ms",
            "timeout": "200ms",
        }

    def invalid_configs(self) -> list[dict[str, Any]]:
        return [{**self.unreachable_config(), "port": 0}]


def test_the_installed_plugin_is_discovered_through_its_entry_point() -> None:
    registry = load_drivers()
    assert registry.drivers["acme_slm"] is AcmeSlmDriver
    assert registry.origins["acme_slm"].startswith("cityneuron-acme-noise")


async def test_the_plugin_runs_in_a_gateway_from_a_yaml_config(tmp_path: Path) -> None:
    async with MeterSim() as sim:
        path = tmp_path / "node.yaml"
        path.write_text(
            textwrap.dedent(f"""\
            node: {{id: n1, data_dir: {tmp_path / "data"}}}
            devices:
              - {{type: acme_slm, id: slm-1, host: 127.0.0.1, port: {sim.port}, interval: 50ms}}
            """)
        )
        gw = Gateway(load_config(path))
        with gw.bus.subscribe("test", kinds=(Reading,)) as sub:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(gw.run(handle_signals=False), name="gateway")
                readings = [await asyncio.wait_for(sub.get(), 10) for _ in range(6)]
                gw.request_stop()
    assert {r.point for r in readings} == {"LAeq", "LAmax", "status"}
    assert all(r.device == "slm-1" for r in readings)
    assert sim.requests >= 2


def test_broken_plugins_are_listed_with_the_reason_and_skipped(tmp_path: Path) -> None:
    """Plugins installed as distributions whose driver fails to import or is too new."""
    site = tmp_path / "site"
    plugins = (
        ("broken", "cityneuron.drivers", "broken_mod:Driver"),
        ("future", "cityneuron.drivers", "future_mod:Driver"),
        ("legacy", "cityneuron.drivers", "legacy_mod:Driver"),
        ("oldapi", "cityneuron.drivers", "oldapi_mod:Driver"),
        ("yolo-ok", "cityneuron.models.decoders", "decoders_mod:good"),
        ("yolo-old", "cityneuron.models.decoders", "decoders_mod:old"),
    )
    for name, group, target in plugins:
        dist = site / f"cityneuron_{name.replace('-', '_')}-1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: cityneuron-{name}\nVersion: 1.0\n"
        )
        (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {target}\n")
    (site / "decoders_mod.py").write_text(
        textwrap.dedent("""\
        def good(outputs, spec):
            return []
        good.api_version = "2.0"

        def old(outputs, spec):
            return []
        old.api_version = "0.1"
        """)
    )
    (site / "broken_mod.py").write_text("import no_such_dependency\n")
    (site / "future_mod.py").write_text(
        textwrap.dedent("""\
        from typing import Literal
        from drivers.api import Driver, DriverConfig

        class Cfg(DriverConfig):
            type: Literal["future"]

        class Driver(Driver):
            type = "future"
            config_model = Cfg
            api_version = "3.0"

            async def run(self, ctx):
                pass
        """)
    )
    # a driver API 1.x plugin as vendors wrote them: it imports the daemon's records
    (site / "legacy_mod.py").write_text("from gateway.records import Reading\n")
    # one that imports only drivers.api but still declares 1.1
    (site / "oldapi_mod.py").write_text(
        (site / "future_mod.py")
        .read_text()
        .replace('"future"', '"oldapi"')
        .replace('api_version = "3.0"', 'api_version = "1.1"')
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "plugins"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "acme_slm" in result.stdout
    assert "modbus" in result.stdout
    assert (
        "broken         cityneuron-broken (broken_mod:Driver): import failed: "
        "ModuleNotFoundError: No module named 'no_such_dependency'" in result.stdout
    )
    assert (
        "future         cityneuron-future (future_mod:Driver): written for driver API 3.0, "
        "this node offers 2.1" in result.stdout
    )
    assert (
        "legacy         cityneuron-legacy (legacy_mod:Driver): import failed: "
        "ModuleNotFoundError: No module named 'gateway.records' (a driver API 1.x plugin: "
        "since 2.0 drivers import only drivers.api; see docs/driver-sdk.md)" in result.stdout
    )
    assert (
        "oldapi         cityneuron-oldapi (oldapi_mod:Driver): written for driver API 1.1, "
        "this node offers 2.1 (update the plugin: since 2.0 drivers import only drivers.api)"
        in result.stdout
    )
    assert "yolo-ok        cityneuron-yolo-ok (decoders_mod:good)" in result.stdout
    assert (
        "yolo-old       cityneuron-yolo-old (decoders_mod:old): written for decoder API 0.1, "
        "this node offers 2.0" in result.stdout
    )
    # the node itself still starts with such plugins around
    config = tmp_path / "node.yaml"
    config.write_text(f"node: {{id: n1, data_dir: {tmp_path}}}\n")
    check = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0
    assert check.stdout.endswith("OK - node n1, no devices, no uplink\n")
