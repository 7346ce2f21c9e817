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
