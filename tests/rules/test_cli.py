"""`cityneuron rules ...` and `cityneuron keys generate` as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from firmware_sim.broker import MosquittoBroker

ROOT = Path(__file__).resolve().parents[2]
EXE = [sys.executable, "-m", "gateway.cli"]
CITY = ROOT / "rules" / "examples" / "city.yaml"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_validate() -> None:
    ok = cli("rules", "validate", str(CITY))
    assert ok.returncode == 0
    assert ok.stdout == (
        f"{CITY}: OK - bundle 'city-demo' version 1, 6 rules (1 on detection, 5 on reading)\n"
    )


def test_validate_reports_the_rule_at_fault(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nrules:\n  - {id: a, when: 'level >', event: {kind: e}}\n")
    result = cli("rules", "validate", str(bad))
    assert result.returncode == 2
    # at the line and column of the condition, without the parser's list of every token
    assert result.stderr.startswith(f"error: {bad}:4:13: rule a: when does not compile")
    assert "expecting" not in result.stderr


def test_validate_counts_rules_from_one_and_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: x\nrules:\n"
        "  - {id: a, when: 'level > 1', event: {kind: e}}\n"
        "  - id: b\n    whenn: level > 1\n    event: {kind: e}\n"
    )
    result = cli("rules", "validate", str(bad))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {bad}:5:5: rule 2 (b): when: required key is missing")
    assert "rule 2 (b): whenn: unknown key" in result.stderr
    assert "Field required" not in result.stderr and "Extra inputs" not in result.stderr


def test_test_against_the_simulated_city() -> None:
    result = cli("rules", "test", str(CITY), "--simulate", "90")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    kinds = [line.split()[2] for line in lines[:-1]]  # "t=", "19.0s", kind, ...
    assert kinds.count("alarm.manhole_open") == 2  # raised and cleared
    assert "alarm.dust" in kinds
    assert "hydrant_open" in kinds
    assert "raised cover of manhole-1 open" in result.stdout
    assert lines[-1].endswith("0 errors, 0 suppressed")


def test_test_against_a_recorded_stream(tmp_path: Path) -> None:
    stream = tmp_path / "rec.jsonl"
    rows = [
        {"t": t, "device": "river-1", "point": "level", "value": 1.2 + 0.01 * t} for t in range(60)
    ]
    stream.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = cli("rules", "test", str(CITY), "--stream", str(stream))
    assert result.returncode == 0, result.stderr
    assert "alarm.river_rising" in result.stdout
    assert "alarm.flood" in result.stdout


def test_keys_sign_and_push_to_a_running_node(tmp_path: Path, broker: MosquittoBroker) -> None:
    keys = cli("keys", "generate", "--id", "ops-2026", "--out", str(tmp_path / "keys"))
    assert keys.returncode == 0, keys.stderr
    public = (tmp_path / "keys" / "ops-2026.pub").read_text().strip()
    assert oct((tmp_path / "keys" / "ops-2026.key").stat().st_mode & 0o777) == "0o600"
    config = tmp_path / "node.yaml"
    config.write_text(
        f"node: {{id: n1, data_dir: {tmp_path / 'data'}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, tls: {{enabled: false}}}}\n"
        f"rules: {{trusted_keys: [{{id: ops-2026, public_key: '{public}'}}]}}\n",
        encoding="utf-8",
    )
    node = subprocess.Popen(
        [*EXE, "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert node.stderr is not None
        deadline, log = time.monotonic() + 20, ""
        while "connected to broker" not in log and time.monotonic() < deadline:
            log += node.stderr.readline()
        bundle = tmp_path / "city.yaml"
        bundle.write_text(CITY.read_text())
        push = [
            "rules",
            "push",
            str(bundle),
            "--node",
            "n1",
            "--host",
            "127.0.0.1",
            "--port",
            str(broker.port),
            "--no-tls",
            "--key",
            str(tmp_path / "keys" / "ops-2026.key"),
        ]
        unsigned = cli(*push)
        assert unsigned.returncode == 2
        assert "no signature" in unsigned.stderr
        assert (
            cli(
                "rules", "sign", str(bundle), "--key", str(tmp_path / "keys" / "ops-2026.key")
            ).returncode
            == 0
        )
        pushed = cli(*push)
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        assert pushed.stdout == "n1: deployed version 1 (6 rules, first bundle)\n"
        again = cli(*push)
        assert again.returncode == 1
        assert again.stdout.startswith("n1: refused (stale_version): version 1 is not newer")
    finally:
        node.send_signal(signal.SIGTERM)
        node.communicate(timeout=20)
    assert node.returncode == 0
