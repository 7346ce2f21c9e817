from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from gateway import runner
from gateway.config import load_config


@pytest.mark.parametrize(("kind", "expected"), [("uvloop", uvloop.Loop), ("auto", uvloop.Loop)])
def test_the_node_runs_on_uvloop_where_installed(kind: runner.EventLoop, expected: type) -> None:
    loop = runner.new_loop(kind)
    try:
        assert isinstance(loop, expected)
    finally:
        loop.close()


def test_asyncio_s_own_loop_on_request() -> None:
    loop = runner.new_loop("asyncio")
    try:
        assert not isinstance(loop, uvloop.Loop)
        assert isinstance(loop, asyncio.BaseEventLoop)
    finally:
        loop.close()


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_run_returns_the_result_and_cancels_what_outlives_it(kind: runner.EventLoop) -> None:
    stopped: list[str] = []

    async def straggler() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.append("straggler")

    async def main() -> str:
        asyncio.get_running_loop().create_task(straggler(), name="straggler")
        await asyncio.sleep(0.01)
        return type(asyncio.get_running_loop()).__name__

    name = runner.run(main(), loop_kind=kind, cancel_timeout=1.0)
    assert (name == "Loop") == (kind == "uvloop")
    assert stopped == ["straggler"]


# Python without uvloop, as on a platform it is not built for: a None entry in sys.modules
# is the import system's own mark of a module that is not there
WITHOUT_UVLOOP = "import sys; sys.modules['uvloop'] = None; "


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_UVLOOP + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_where_uvloop_is_missing_auto_runs_on_asyncio_s_loop() -> None:
    done = _python(
        "import asyncio; from gateway import runner\n"
        "async def main() -> str: return type(asyncio.get_running_loop()).__module__\n"
        "print(runner.run(main(), loop_kind='auto'))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("asyncio")


def test_asking_for_uvloop_where_it_is_missing_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        "node: {id: n1, data_dir: /tmp/x, event_loop: uvloop}\n"
        "mqtt: {host: 127.0.0.1, tls: {enabled: false}}\n",
        encoding="utf-8",
    )
    assert load_config(cfg).node.event_loop == "uvloop"  # here, where it is installed
    done = _python(f"from gateway.cli import main; sys.exit(main(['check-config', {str(cfg)!r}]))")
    assert done.returncode != 0
    assert "uvloop is not installed" in done.stdout + done.stderr
    assert "node.yaml" in done.stdout + done.stderr
