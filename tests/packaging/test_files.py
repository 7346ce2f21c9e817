"""The unit and the container keep their promises (dedicated user, hardening)."""

from __future__ import annotations

import configparser
from pathlib import Path

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"


def test_systemd_unit_is_hardened() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(PACKAGING / "systemd" / "cityneuron.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["User"] == "cityneuron"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/cityneuron"
    assert service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert service["DevicePolicy"] == "closed"
    assert "WatchdogSec" in service
    assert service["ExecStart"].endswith("run --config /etc/cityneuron/node.yaml")
    # bounded: memory, tasks, files, and a crash loop that ends visibly
    assert service["MemoryMax"] == "512M"
    assert int(service["TasksMax"]) <= 256
    assert service["UMask"] == "0027"
    assert int(unit["Unit"]["StartLimitBurst"]) > 0
    assert int(unit["Unit"]["StartLimitIntervalSec"]) > 0


def test_container_runs_unprivileged_from_a_venv() -> None:
    text = (PACKAGING / "docker" / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert "USER cityneuron" in lines
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert "ENV PATH=/opt/cityneuron/venv/bin:$PATH PYTHONUNBUFFERED=1" in lines


def test_what_ships_is_pinned_by_hash_and_matches_the_project() -> None:
    """The .deb and the image install from lock files with hashes (uv pip compile
    --generate-hashes), and the lock names every runtime dependency of pyproject.toml."""
    import re
    import tomllib

    project = tomllib.loads((PACKAGING.parent / "pyproject.toml").read_text())["project"]
    for lock, deps in (
        ("requirements.lock", project["dependencies"]),
        (
            "requirements-vision.lock",
            project["dependencies"] + project["optional-dependencies"]["vision"],
        ),
    ):
        text = (PACKAGING / lock).read_text()
        pinned = {
            m.group(1).lower().replace("_", "-")
            for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", text, re.MULTILINE)
        }
        for dep in deps:
            name = re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower().replace("_", "-")
            assert name in pinned, f"{name} is not pinned in {lock}"
        entries = re.findall(r"^[A-Za-z0-9_.-]+==", text, re.MULTILINE)
        assert text.count("--hash=sha256:") >= len(entries)
        assert "torch" not in pinned  # training only, never shipped
    assert "--require-hashes" in (PACKAGING / "build-deb").read_text()
    assert "--require-hashes" in (PACKAGING / "docker" / "Dockerfile").read_text()


def test_pin_base_writes_the_digest_the_registry_gives(tmp_path: Path) -> None:
    """No registry is reachable here; `crane` on PATH stands in for the registry client,
    and the script's part (ask, check the answer, rewrite ARG BASE) is what is tested."""
    import os
    import shutil
    import subprocess

    folder = tmp_path / "docker"
    folder.mkdir()
    for name in ("Dockerfile", "pin-base"):
        shutil.copy2(PACKAGING / "docker" / name, folder / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    digest = "sha256:" + "ab" * 32
    crane = bin_dir / "crane"
    crane.write_text(f'#!/bin/sh\n[ "$1" = digest ] && echo {digest}\n')
    crane.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    done = subprocess.run(
        [folder / "pin-base"], check=False, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    lines = (folder / "Dockerfile").read_text().splitlines()
    assert f"ARG BASE=python:3.11-slim-bookworm@{digest}" in lines
    assert sum(line.startswith("FROM ${BASE}") for line in lines) == 2
    # a registry answer that is not a digest changes nothing and says so
    crane.write_text("#!/bin/sh\necho 'error: MANIFEST_UNKNOWN'\n")
    before = (folder / "Dockerfile").read_text()
    bad = subprocess.run(
        [folder / "pin-base"], check=False, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 1 and "no digest" in bad.stderr
    assert (folder / "Dockerfile").read_text() == before
