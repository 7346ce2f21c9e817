from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest
import uvloop

from gateway import runner
from gateway.config import ConfigError, load_config


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


def test_asking_for_uvloop_where_it_is_missing_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        "node: {id: n1, data_dir: /tmp/x, event_loop: uvloop}\n"
        "mqtt: {host: 127.0.0.1, tls: {enabled: false}}\n",
        encoding="utf-8",
    )
    assert load_config(cfg).node.event_loop == "uvloop"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        load_config(cfg)
