"""Field tools: ``cityneuron doctor`` (what is wrong with this box?) and
``cityneuron modbus scan`` (which units answer on this line?)."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.config import ConfigError, NodeConfig, load_config

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Check:
    name: str
    status: str
    detail: str


class Doctor:
    """Runs the checks and prints one line each as it goes."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.checks: list[Check] = []

    def report(self, name: str, status: str, detail: str) -> None:
        self.checks.append(Check(name, status, detail))
        mark = {OK: "  ok  ", WARN: " warn ", FAIL: " FAIL "}[status]
        self.out.write(f"[{mark}] {name}: {detail}\n")
        self.out.flush()

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.checks)


def check_config(doc: Doctor, path: str) -> NodeConfig | None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            doc.report("config", FAIL, str(issue))
        return None
    doc.report("config", OK, f"{path}: node {config.node.id}, {len(config.devices)} device(s)")
    return config


def check_disk(doc: Doctor, config: NodeConfig) -> None:
    data = config.node.data_dir
    probe = data if data.exists() else data.parent
    if not data.exists():
        doc.report("data directory", WARN, f"{data} does not exist yet (created at start)")
    elif not os.access(data, os.W_OK):
        doc.report("data directory", FAIL, f"{data} is not writable by this user")
    else:
        doc.report("data directory", OK, f"{data} is writable")
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        doc.report("disk", FAIL, f"cannot inspect {probe}: {exc.strerror}")
        return
    budget = int(config.outbox.max_bytes)
    free_mb, budget_mb = usage.free // 2**20, budget // 2**20
    if usage.free < budget:
        doc.report("disk", WARN, f"{free_mb} MB free, less than the outbox budget {budget_mb} MB")
    else:
        doc.report("disk", OK, f"{free_mb} MB free (outbox budget {budget_mb} MB)")


def check_clock(doc: Doctor, run: Callable[..., Any] = subprocess.run) -> None:
    now = datetime.now(UTC)
    if now.year < 2025:
        doc.report("clock", FAIL, f"system time is {now:%Y-%m-%d}: set the clock (NTP)")
        return
    synced = None
    if shutil.which("timedatectl"):
        result = run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            check=False,
            timeout=5,
        )
        if result.returncode == 0:
            synced = result.stdout.strip() == "yes"
    if synced is False:
        doc.report("clock", WARN, f"{now:%Y-%m-%d %H:%M:%SZ}, not synchronised by NTP")
    else:
        state = "synchronised by NTP" if synced else "NTP state unknown"
        doc.report("clock", OK, f"{now:%Y-%m-%d %H:%M:%SZ}, {state}")


def check_serial_ports(doc: Doctor, config: NodeConfig) -> None:
    ports: dict[str, list[str]] = {}
    for device in config.devices:
        conn = getattr(device, "connection", None)
        port = getattr(device, "port", None) or getattr(conn, "port", None)
        if isinstance(port, str) and port.startswith("/"):
            ports.setdefault(port, []).append(device.id)
    for port, devices in sorted(ports.items()):
        who = ", ".join(devices)
        path = Path(port)
        if not path.exists():
            doc.report("serial port", FAIL, f"{port} ({who}) does not exist: unplugged?")
        elif not os.access(path, os.R_OK | os.W_OK):
            doc.report(
                "serial port",
                FAIL,
                f"{port} ({who}): no read/write permission (add the user to 'dialout')",
            )
        else:
            doc.report("serial port", OK, f"{port} ({who}) present and accessible")


async def check_broker(doc: Doctor, config: NodeConfig) -> None:
    mqtt = config.mqtt
    if mqtt is None:
        doc.report("broker", WARN, "no mqtt section: the node stores but sends nothing")
        return
    host, port = mqtt.host, mqtt.effective_port
    started = time.monotonic()
    try:
        async with asyncio.timeout(5):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
        await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        doc.report("broker", FAIL, f"{host}:{port} unreachable: {exc or 'timeout'}")
        return
    doc.report(
        "broker", OK, f"{host}:{port} reachable ({(time.monotonic() - started) * 1000:.0f} ms)"
    )
    tls = None
    if mqtt.tls.enabled:
        try:
            tls = ssl.create_default_context(
                cafile=str(mqtt.tls.ca_file) if mqtt.tls.ca_file else None
            )
            if mqtt.tls.cert_file and mqtt.tls.key_file:
                tls.load_cert_chain(str(mqtt.tls.cert_file), str(mqtt.tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            doc.report("TLS", FAIL, f"certificates cannot be loaded: {exc}")
            return
    import aiomqtt  # noqa: PLC0415

    try:
        async with aiomqtt.Client(
            host,
            port,
            username=mqtt.username,
            password=mqtt.password.get_secret_value() if mqtt.password else None,
            tls_context=tls,
            identifier=f"{config.node.id}-doctor",
            timeout=5,
        ):
            pass
    except aiomqtt.MqttError as exc:
        doc.report("MQTT", FAIL, f"connection refused: {exc}")
        return
    doc.report(
        "MQTT", OK, "connected" + (" with a verified TLS certificate" if tls else " WITHOUT TLS")
    )


async def check_modbus_tcp(doc: Doctor, config: NodeConfig) -> None:
    for device in config.devices:
        conn = getattr(device, "connection", None)
        if getattr(conn, "kind", None) != "tcp":
            continue
        host, port = conn.host, conn.port  # type: ignore[union-attr]
        try:
            async with asyncio.timeout(3):
                _, writer = await asyncio.open_connection(host, port)
            writer.close()
            await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            doc.report(
                "modbus tcp", FAIL, f"{device.id}: {host}:{port} unreachable: {exc or 'timeout'}"
            )
            continue
        doc.report("modbus tcp", OK, f"{device.id}: {host}:{port} reachable")


async def check_models(doc: Doctor, config: NodeConfig) -> None:
    """Each model package: model.yaml valid, sha256 matching, loads and runs."""
    if not config.models.packages:
        return
    from models.package import ModelError  # noqa: PLC0415 - onnxruntime only if used
    from models.runtime import LoadedModel  # noqa: PLC0415

    for name, directory in config.models.packages.items():
        started = time.monotonic()
        try:
            model = await asyncio.to_thread(LoadedModel.load, directory, threads=1)
        except ModelError as exc:
            doc.report("model", FAIL, f"{name}: {exc}")
            continue
        took = time.monotonic() - started
        spec = model.spec
        w, h = spec.input.size
        await asyncio.to_thread(model.close)
        doc.report(
            "model",
            OK,
            f"{name}: {spec.name} {spec.version}, sha256 ok, {w}x{h} input, "
            f"{len(spec.classes)} classes, loaded and warmed up in {took:.1f}s",
        )


def _grab_frame(source: str, timeout: float) -> tuple[int, int] | str:
    from drivers.camera.source import open_capture  # noqa: PLC0415 - OpenCV only if used

    cap = open_capture(source, timeout)
    try:
        if not cap.isOpened():
            return "cannot open it"
        ok, frame = cap.read()
        if not ok or frame is None:
            return "opens but delivers no frame"
        return int(frame.shape[1]), int(frame.shape[0])
    finally:
        cap.release()


async def check_cameras(doc: Doctor, config: NodeConfig) -> None:
    for device in config.devices:
        if device.type != "camera":
            continue
        source = str(getattr(device, "source", ""))
        got = await asyncio.to_thread(_grab_frame, source, 5.0)
        if isinstance(got, str):
            doc.report("camera", FAIL, f"{device.id}: {source}: {got}")
        else:
            doc.report("camera", OK, f"{device.id}: {source}: frames of {got[0]}x{got[1]}")
        model = getattr(device, "model", None)
        if model is not None and model not in config.models.packages:
            doc.report("camera", FAIL, f"{device.id}: model {model!r} is not in `models`")


async def run_doctor(path: str, out: TextIO) -> int:
    doc = Doctor(out)
    config = check_config(doc, path)
    if config is not None:
        check_disk(doc, config)
        check_clock(doc)
        check_serial_ports(doc, config)
        await check_modbus_tcp(doc, config)
        await check_cameras(doc, config)
        await check_models(doc, config)
        await check_broker(doc, config)
    failures = sum(c.status == FAIL for c in doc.checks)
    warnings = sum(c.status == WARN for c in doc.checks)
    out.write(f"{len(doc.checks)} checks: {failures} failed, {warnings} warning(s)\n")
    return 1 if doc.failed else 0


# --- modbus scan -----------------------------------------------------------------------


def _probe(register: int, unit: int) -> Callable[[Any], Any]:
    def request(client: Any) -> Any:
        return client.read_holding_registers(register, count=1, device_id=unit)

    return request


async def modbus_scan(
    out: TextIO,
    *,
    host: str | None,
    port: int,
    serial: str | None,
    baudrate: int,
    units: range,
    wait: float,
    register: int,
) -> list[int]:
    """Probe `units` with one holding-register read each; return those that answered."""
    from drivers.modbus.line import (  # noqa: PLC0415
        ExceptionCodeError,
        LineError,
        ModbusLine,
        NoResponse,
        RtuLink,
        TcpLink,
    )

    link = TcpLink(host, port) if host else RtuLink(str(serial), baudrate, "N", 1, 8)
    line = ModbusLine(link, wait)
    where = f"{host}:{port}" if host else f"{serial} at {baudrate} 8N1"
    out.write(
        f"scanning units {units.start}-{units.stop - 1} on {where} (timeout {wait:g}s each)...\n"
    )
    out.flush()
    found: list[int] = []
    try:
        for i, unit in enumerate(units):
            try:
                pdu = await line.call(_probe(register, unit))
                out.write(
                    f"unit {unit}: answers (holding register {register} = {pdu.registers[0]})\n"
                )
                found.append(unit)
            except ExceptionCodeError as exc:
                out.write(f"unit {unit}: present, refuses register {register}: {exc}\n")
                found.append(unit)
            except NoResponse:
                pass
            except LineError as exc:
                out.write(f"line error: {exc}\n")
                break
            if (i + 1) % 25 == 0:
                out.write(f"... {i + 1}/{len(units)} probed, {len(found)} found\n")
            out.flush()
    finally:
        await line.aclose()
    out.write(f"{len(found)} unit(s) answered: {', '.join(map(str, found)) or 'none'}\n")
    return found
