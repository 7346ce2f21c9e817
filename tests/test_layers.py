"""The import contracts in pyproject.toml hold, and a wrong import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("gateway", "drivers", "models", "rules", "firmware_sim")


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache", "--no-logo"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_tree(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("*.onnx"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        ("drivers/sneaky.py", "from gateway.outbox import Outbox\n", "drivers is not allowed"),
        ("gateway/kernel/sneaky.py", "import gateway.bus\n", "gateway.kernel is not allowed"),
        ("rules/sneaky.py", "from drivers.modbus import codec\n", "rules is not allowed"),
        ("gateway/sneaky.py", "import firmware_sim.city\n", "gateway is not allowed"),
        ("models/sneaky.py", "import rules.engine\n", "independent"),
    ],
)
def test_a_wrong_import_breaks_a_contract(
    tmp_path: Path, module: str, source: str, broken: str
) -> None:
    tree = copy_tree(tmp_path)
    (tree / module).write_text(source)
    result = lint(tree)
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout
    assert "1 broken" in result.stdout or "broken" in result.stdout
