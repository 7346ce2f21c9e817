"""The Debian package: built, installed on this machine, run, verified, removed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("dpkg-deb") is None,
    reason="installing a .deb needs root and dpkg (CI runs as root on Debian)",
)


def run(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def test_build_install_run_and_remove(tmp_path: Path) -> None:
    build = run(str(ROOT / "packaging" / "build-deb"), str(tmp_path), timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    deb = Path(build.stdout.strip().splitlines()[-1])
    assert deb.name.startswith("cityneuron_0.1.0_")
    info = run("dpkg-deb", "--info", str(deb)).stdout
    assert "Package: cityneuron" in info
    assert "Depends: python3 (>= 3.11)" in info
    contents = run("dpkg-deb", "--contents", str(deb)).stdout
    for path in (
        "./opt/cityneuron/venv/bin/cityneuron",
        "./etc/cityneuron/node.yaml",
        "./lib/systemd/system/cityneuron.service",
    ):
        assert path in contents
    try:
        install = run("dpkg", "-i", str(deb))
        assert install.returncode == 0, install.stderr
        version = run("/usr/bin/cityneuron", "version")
        assert version.stdout.startswith("cityneuron 0.1.0"), version.stderr
        # as the service runs it: the dedicated user, the shipped example config
        check = run(
            "runuser",
            "-u",
            "cityneuron",
            "--",
            "/opt/cityneuron/venv/bin/cityneuron",
            "check-config",
            "/etc/cityneuron/node.yaml",
        )
        assert check.returncode == 0, check.stderr
        assert check.stdout.startswith("/etc/cityneuron/node.yaml: OK - node lamp-post-17")
        assert "dialout" in run("id", "-nG", "cityneuron").stdout.split()
        assert oct(Path("/var/lib/cityneuron").stat().st_mode & 0o777) == "0o750"
        if shutil.which("systemd-analyze"):
            verify = run("systemd-analyze", "verify", "/lib/systemd/system/cityneuron.service")
            assert verify.returncode == 0, verify.stderr
            assert verify.stderr == ""
    finally:
        purge = run("dpkg", "--purge", "cityneuron")
    assert purge.returncode == 0, purge.stderr
    assert not Path("/opt/cityneuron/venv/bin/cityneuron").exists()
    assert run("id", "cityneuron").returncode != 0
