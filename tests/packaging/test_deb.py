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
    deb, vision = (Path(p) for p in build.stdout.strip().splitlines()[-2:])
    assert vision.name.startswith("cityneuron-vision_0.1.0_")
    vinfo = run("dpkg-deb", "--info", str(vision)).stdout
    assert "Depends: cityneuron (= 0.1.0)" in vinfo
    # the core is the smaller part: no onnxruntime, OpenCV, numpy or shipped models
    sizes = {d: int(run("dpkg-deb", "-f", str(d), "Installed-Size").stdout) for d in (deb, vision)}
    assert sizes[deb] < sizes[vision] / 2, sizes
    core_files = run("dpkg-deb", "--contents", str(deb)).stdout
    for absent in ("/onnxruntime/", "/cv2/", "/numpy/", "/models/zoo/"):
        assert absent not in core_files, absent
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
        # without the vision package a camera config is refused, saying what to install
        camera = tmp_path / "camera.yaml"
        camera.write_text(
            f"node: {{id: cam-node, data_dir: {tmp_path / 'data'}}}\n"
            "devices:\n  - {type: camera, id: cam-1, source: /dev/video0}\n"
        )
        refused = run("/usr/bin/cityneuron", "check-config", str(camera))
        assert refused.returncode == 2
        assert "devices[0].type: driver 'camera' needs cv2, numpy, onnxruntime" in refused.stderr
        assert "cityneuron-vision" in refused.stderr
        listing = run("/usr/bin/cityneuron", "plugins").stdout
        assert "camera" in listing and "unavailable" in listing
        install = run("dpkg", "-i", str(vision))
        assert install.returncode == 0, install.stderr
        accepted = run("/usr/bin/cityneuron", "check-config", str(camera))
        assert accepted.returncode == 0, accepted.stderr
        assert oct(Path("/var/lib/cityneuron").stat().st_mode & 0o777) == "0o750"
        if shutil.which("systemd-analyze"):
            verify = run("systemd-analyze", "verify", "/lib/systemd/system/cityneuron.service")
            assert verify.returncode == 0, verify.stderr
            assert verify.stderr == ""
    finally:
        purge = run("dpkg", "--purge", "cityneuron-vision", "cityneuron")
    assert purge.returncode == 0, purge.stderr
    assert not Path("/opt/cityneuron/venv/bin/cityneuron").exists()
    assert run("id", "cityneuron").returncode != 0
