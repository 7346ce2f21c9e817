"""The `cityneuron` command, run as a real process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware_sim.broker import MosquittoBroker
from firmware_sim.road import street
from gateway.kernel.geo import distance_m

ROOT = Path(__file__).resolve().parents[2]
EXE = [sys.executable, "-m", "gateway.cli"]


def cli(*args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [*EXE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )


def test_version() -> None:
    result = cli("version")
    assert result.returncode == 0
    assert result.stdout.startswith("cityneuron 0.1.0 (driver API 2.1")


def test_check_config_accepts_the_example_with_one_summary_line() -> None:
    result = cli("check-config", "examples/node.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        "examples/node.yaml: OK - node lamp-post-17, 4 modbus, mqtt mqtt.city.example:8883"
    ]


def test_check_config_accepts_the_vehicle_example() -> None:
    result = cli("check-config", "examples/vehicle.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "examples/vehicle.yaml: OK - node sweeper-3, 3 serial, mqtt mqtt.city.example:8883\n"
    )


def test_check_config_lists_every_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "node:\n  id: n1\n  colour: red\n"
        "devices:\n"
        "  - type: modbus\n    id: m1\n    profile: manhole_cover\n    unit: 300\n"
        "    connection: {kind: tcp, host: h}\n"
        "  - type: modbus\n    id: m2\n    profile: no_such_profile\n    unit: 1\n"
        "    connection: {kind: tcp, host: h}\n"
        "    poll_groups: [{name: g, interval: 1s, points: [lid]}]\n",
        encoding="utf-8",
    )
    result = cli("check-config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"error: {path}:3:3: node.colour: unknown key (not allowed here; check spelling "
        "and indentation)"
    )
    assert lines[1] == f"error: {path}:8:5: devices[0].unit: must be at most 255 (got 300)"
    assert lines[2].startswith(f"error: {path}:12:5: devices[1].profile: no shipped profile")
    assert len(lines) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node: [1, 2\n", ":2:1: invalid YAML"),
        (
            "node: {id: n1}\nmqtt: {host: b, port: abc}\n",
            ":2:17: mqtt.port: must be a whole number",
        ),
        ("node: {id: n1\x01}\n", ":1:14: invalid YAML: control character #x0001 is not allowed"),
        ("node: {id: n1}\ndevices:\n", ":2:1: devices: must be a list"),  # found by fuzzing
    ],
)
def test_check_config_malformed_never_tracebacks(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    result = cli("check-config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {path}{expected}")


def test_check_config_never_echoes_a_substituted_secret(tmp_path: Path) -> None:
    secret = tmp_path / "broker-password"
    secret.write_text("hunter2-s3cret\n")
    path = tmp_path / "c.yaml"
    path.write_text(
        "node: {id: n1}\n"
        f"mqtt: {{host: b, port: '${{file:{secret}}}', keepalive: '${{KEEP}}'}}\n",
        encoding="utf-8",
    )
    result = cli("check-config", str(path), env={**os.environ, "KEEP": "env-s3cret"})
    assert result.returncode == 2
    assert "hunter2" not in result.stderr + result.stdout
    assert "env-s3cret" not in result.stderr + result.stdout
    assert f"error: {path}:2:17: mqtt.port: must be a whole number (got '***')" in result.stderr
    assert "mqtt.keepalive: must be a whole number (got '***')" in result.stderr


def test_the_node_keeps_its_files_from_others_whatever_umask_it_starts_with(
    tmp_path: Path,
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        f"node: {{id: n1, data_dir: {tmp_path / 'data'}}}\n"
        f"rules: {{file: {ROOT / 'rules' / 'examples' / 'city.yaml'}}}\n"
        "http: {enabled: false}\ndiscovery: {enabled: false}\n",
        encoding="utf-8",
    )
    node = subprocess.Popen(
        [*EXE, "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        umask=0,  # the most permissive start there is
    )
    try:
        assert node.stderr is not None
        deadline, log = time.monotonic() + 20, ""
        while "running with" not in log and time.monotonic() < deadline:
            log += node.stderr.readline()
    finally:
        node.send_signal(signal.SIGTERM)
        node.communicate(timeout=20)
    made = list((tmp_path / "data").rglob("*"))
    assert any(p.name == "outbox.db" for p in made), made
    for path in [tmp_path / "data", *made]:
        mode = path.stat().st_mode & 0o777
        assert mode & 0o027 == 0, f"{path} is {oct(mode)}: group-writable or open to others"


def test_check_config_missing_file() -> None:
    result = cli("check-config", "/nonexistent/node.yaml")
    assert (result.returncode, result.stderr) == (
        2,
        "error: /nonexistent/node.yaml: file not found\n",
    )


def test_run_stops_cleanly_on_sigterm(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        f"node: {{id: n1, data_dir: {tmp_path / 'data'}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, tls: {{enabled: false}}}}\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [*EXE, "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 20
        log = ""
        assert proc.stderr is not None
        while "connected to broker" not in log and time.monotonic() < deadline:
            log += proc.stderr.readline()
        assert "connected to broker" in log
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopping node n1" in err
    assert "outbox closed" in err
    assert time.monotonic() - started < 10


def test_run_with_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("node: {}\n", encoding="utf-8")
    result = cli("run", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr == f"error: {config}:1:1: node.id: required key is missing\n"


def test_demo_shows_readings_and_road_defects_arriving_upstream_and_stops(
    tmp_path: Path,
) -> None:
    result = cli("demo", "--duration", "22", "--workdir", str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "status     demo-sweeper-3 is online" in out
    assert "telemetry  manhole-1" in out
    assert "telemetry  river-gauge" in out
    assert "EVENT      hydrant-7" in out
    assert "telemetry  gps" in out
    assert "telemetry  rain-gauge" in out
    assert "status     demo-sweeper-3 is offline" in out
    assert "0 message(s) left in the outbox" in out
    assert (tmp_path / "node.yaml").exists()
    # the inspection drive: the shipped road model on the rendered video, the GPS on the
    # same street; the first defects are reported once each, where the street has them
    found = re.findall(r"defect (\w+) found at (-?[\d.]+),(-?[\d.]+)", out)
    assert len(found) >= 2, out
    s = street(seed=1)
    truth = [s.position(d.along) for d in s.defects]
    for _, lat, lon in found:
        assert min(distance_m((float(lat), float(lon)), t) for t in truth) < 5.0, out
    assert len({(lat, lon) for _, lat, lon in found}) == len(found)


def test_run_exits_nonzero_when_a_component_keeps_failing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x", encoding="utf-8")
    config = tmp_path / "node.yaml"
    # the outbox cannot be created (its parent is a file): every start fails
    config.write_text(
        f"node: {{id: n1, data_dir: {tmp_path}}}\noutbox: {{path: {blocker}/outbox.db}}\n",
        encoding="utf-8",
    )
    result = cli("run", "--config", str(config), timeout=60)
    assert result.returncode == 1
    assert "component outbox failed; restarting with backoff" in result.stderr
    assert "component outbox failed 5 times within 60s; giving up" in result.stderr
    assert "node stopped on error" in result.stderr
    # the failure is logged once when the streak starts, not once per attempt
    assert result.stderr.count("restarting with backoff") == 1


FRAGMENTED_HEAP = """
import ctypes, os, sys
from gateway.cli import tune_malloc

def anon_kb():
    for line in open(f"/proc/{os.getpid()}/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1])

libc = ctypes.CDLL(None)
if sys.argv[1] == "tuned" and not tune_malloc():
    sys.exit(3)
if sys.argv[1] == "heap":  # where glibc's own threshold ends up once a large block is freed
    libc.mallopt(-3, 32 << 20)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
keep = []
before = anon_kb()
for _ in range(3):  # frame-sized buffers, each round pinned by a small block above it
    blocks = [libc.malloc(1 << 20) for _ in range(20)]
    for b in blocks:
        ctypes.memset(b, 1, 1 << 20)
    keep.append(libc.malloc(64 << 10))
    for b in blocks:
        libc.free(b)
print(anon_kb() - before)
"""


def test_tuned_malloc_gives_freed_frame_buffers_back(tmp_path: Path) -> None:
    def retained_kb(mode: str) -> int:
        result = subprocess.run(
            [sys.executable, "-c", FRAGMENTED_HEAP, mode],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode == 3:
            pytest.skip("not glibc: mallopt is not available")
        assert result.returncode == 0, result.stderr
        return int(result.stdout)

    tuned = retained_kb("tuned")
    # the control: blocks served from the heap stay resident below a live block (glibc's
    # default dynamic threshold gets there after the first freed frame, but whether it has
    # depends on what the process freed before; the control sets it outright)
    heap = retained_kb("heap")
    assert heap > 15_000
    assert tuned < 3_000


def test_a_node_without_a_camera_loads_no_vision_code() -> None:
    """The CLI's parser (with its plugin commands), the config and the node's components
    of a Modbus-only box leave OpenCV, numpy and onnxruntime unloaded (~35 MB resident)."""
    probe = (
        "import sys\n"
        "from gateway.cli import build_parser\n"
        "from gateway.config import load_config\n"
        "from gateway.app import Gateway\n"
        "build_parser()\n"
        "Gateway(load_config('examples/node.yaml'))\n"
        "print(sorted(m for m in ('cv2', 'numpy', 'onnxruntime', 'firmware_sim.demo')"
        " if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
