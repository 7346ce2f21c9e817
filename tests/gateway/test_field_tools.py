"""`cityneuron doctor` and `cityneuron modbus scan` against real brokers, lines and devices."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

from drivers.modbus.profile import load_profile
from firmware_sim.broker import MosquittoBroker, free_port
from firmware_sim.camera import CameraServer
from firmware_sim.modbus import ModbusSimServer, SimSlave
from firmware_sim.pki import make_pki
from firmware_sim.pty import PtyPair

ROOT = Path(__file__).resolve().parents[2]


async def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_modbus_scan_finds_the_units_that_answer_on_an_rtu_line(tmp_path: Path) -> None:
    profile = load_profile("manhole_cover")
    slaves = [SimSlave(unit=u, profile=profile) for u in (2, 5, 9)]
    slaves[1].holes.add((slaves[1].profile.points["tilt_limit"].table, 0))
    with PtyPair(tmp_path, "rs485") as pty:
        async with ModbusSimServer(slaves, serial_port=str(pty.device)):
            result = await cli(
                "modbus",
                "scan",
                "--rtu",
                str(pty.host),
                "--baud",
                "19200",
                "--units",
                "1-10",
                "--timeout",
                "0.1",
            )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"scanning units 1-10 on {pty.host} at 19200 8N1 (timeout 0.1s each)..."
    assert "unit 2: answers (holding register 0 = 0)" in lines
    assert any(line.startswith("unit 5: present, refuses register 0") for line in lines)
    assert lines[-1] == "3 unit(s) answered: 2, 5, 9"


async def test_modbus_scan_over_tcp_and_nothing_there() -> None:
    async with ModbusSimServer([SimSlave(unit=1, profile=load_profile("river_level"))]) as s:
        ok = await cli(
            "modbus", "scan", "--tcp", f"127.0.0.1:{s.port}", "--units", "1-3", "--timeout", "0.1"
        )
    assert ok.stdout.splitlines()[-1] == "1 unit(s) answered: 1"
    nothing = await cli("modbus", "scan", "--tcp", f"127.0.0.1:{free_port()}", "--units", "1")
    assert nothing.returncode == 1
    assert "line error: cannot open" in nothing.stdout


async def test_doctor_reports_each_check(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with MosquittoBroker(workdir=tmp_path, tls=pki) as broker:
        async with ModbusSimServer([SimSlave(unit=1, profile=load_profile("river_level"))]) as s:
            config = tmp_path / "node.yaml"
            config.write_text(
                f"node: {{id: n1, data_dir: {tmp_path / 'data'}}}\n"
                f"mqtt: {{host: 127.0.0.1, port: {broker.tls_port},"
                f" tls: {{ca_file: {pki.ca_cert}}}}}\n"
                "devices:\n"
                f"  - {{type: modbus, id: river, profile: river_level, unit: 1,"
                f" connection: {{kind: tcp, host: 127.0.0.1, port: {s.port}}}}}\n"
                "  - {type: modbus, id: manhole, profile: manhole_cover, unit: 1,"
                f" connection: {{kind: rtu, port: {tmp_path / 'ttyUSB9'}}}}}\n",
                encoding="utf-8",
            )
            result = await cli("doctor", "--config", str(config))
    out = result.stdout
    assert result.returncode == 1  # the serial adapter is missing
    assert f"[  ok  ] config: {config}: node n1, 2 device(s)" in out
    assert f"[ FAIL ] serial port: {tmp_path / 'ttyUSB9'} (manhole) does not exist" in out
    assert f"[  ok  ] modbus tcp: river: 127.0.0.1:{s.port} reachable" in out
    assert f"[  ok  ] broker: 127.0.0.1:{broker.tls_port} reachable" in out
    assert "[  ok  ] MQTT: connected with a verified TLS certificate" in out
    assert "[ warn ] data directory" in out  # not created yet
    assert "] clock: " in out
    assert out.splitlines()[-1].startswith("8 checks: 1 failed")


async def test_doctor_with_a_broken_config_and_an_unknown_ca(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: {id: n1, colour: red}\n", encoding="utf-8")
    result = await cli("doctor", "--config", str(bad))
    assert result.returncode == 1
    assert "[ FAIL ] config: " in result.stdout
    assert "node.colour: unknown key" in result.stdout
    pki = make_pki(tmp_path / "pki")
    with MosquittoBroker(workdir=tmp_path, tls=pki) as broker:
        config = tmp_path / "node.yaml"
        config.write_text(
            f"node: {{id: n1, data_dir: {tmp_path}}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {broker.tls_port}}}\n",  # system CAs only
            encoding="utf-8",
        )
        result = await cli("doctor", "--config", str(config))
    assert "[ FAIL ] MQTT: connection refused:" in result.stdout
    assert "CERTIFICATE_VERIFY_FAILED" in result.stdout


async def test_doctor_checks_cameras_and_model_packages(tmp_path: Path) -> None:
    fixtures = ROOT / "tests" / "fixtures" / "models"
    tampered = tmp_path / "tampered"
    shutil.copytree(fixtures / "yolov5-tiny", tampered)
    with (tampered / "model.onnx").open("ab") as f:
        f.write(b"\0")
    dead = f"http://127.0.0.1:{free_port()}/video"
    with CameraServer() as camera:
        config = tmp_path / "node.yaml"
        config.write_text(
            f"node: {{id: n1, data_dir: {tmp_path / 'data'}}}\n"
            "models:\n"
            f"  packages: {{road: {fixtures / 'yolov8-tiny'}, old: {tampered}}}\n"
            "devices:\n"
            f"  - {{type: camera, id: front, source: '{camera.url}', model: road}}\n"
            f"  - {{type: camera, id: rear, source: '{dead}'}}\n",
            encoding="utf-8",
        )
        result = await cli("doctor", "--config", str(config))
    out = result.stdout
    assert result.returncode == 1
    assert f"[  ok  ] camera: front: {camera.url}: frames of 320x240" in out
    assert f"[ FAIL ] camera: rear: {dead}: cannot open it" in out
    assert "[  ok  ] model: road: yolov8-tiny 1, sha256 ok, 160x160 input, 3 classes" in out
    assert "[ FAIL ] model: old: " in out
    assert "(corrupt or replaced file)" in out
