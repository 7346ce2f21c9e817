"""Shared fixtures: real brokers and a guard against leaked tasks, threads and sockets."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from firmware_sim.broker import MosquittoBroker


def _socket_fds() -> set[str]:
    fds = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith("socket:"):
            fds.add(f"{fd.name}->{target}")
    return fds


def _live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


def _leaks(threads_before: set[threading.Thread], sockets_before: set[str]) -> list[str]:
    problems = []
    new_threads = _live_threads() - threads_before
    new_sockets = _socket_fds() - sockets_before
    if new_threads:
        problems.append("threads: " + ", ".join(sorted(t.name for t in new_threads)))
    if new_sockets:
        problems.append(f"{len(new_sockets)} socket(s): {sorted(new_sockets)}")
    return problems


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves threads, sockets or (async tests) asyncio tasks behind."""
    if request.node.get_closest_marker("asyncio"):
        # checked inside the test's event loop, whose own sockets are not the test's
        request.getfixturevalue("_async_no_leaks")
        yield
        return
    threads_before = _live_threads()
    sockets_before = _socket_fds()
    yield
    deadline = time.monotonic() + 3.0
    while problems := _leaks(threads_before, sockets_before):
        if time.monotonic() > deadline:
            pytest.fail("test leaked " + "; ".join(problems))
        time.sleep(0.05)


@pytest.fixture
async def _async_no_leaks() -> AsyncIterator[None]:
    threads_before = _live_threads()
    sockets_before = _socket_fds()
    tasks_before = asyncio.all_tasks()
    yield
    leaked: set[asyncio.Task[object]] = set()
    for _ in range(50):
        leaked = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
        if not leaked:
            break
        await asyncio.sleep(0.01)
    if leaked:
        names = sorted(t.get_name() for t in leaked)
        for task in leaked:
            task.cancel()
        await asyncio.gather(*leaked, return_exceptions=True)
        pytest.fail(f"test leaked asyncio tasks: {names}")
    # threads of asyncio.to_thread belong to the loop's executor: end them first
    await asyncio.get_running_loop().shutdown_default_executor()
    deadline = time.monotonic() + 3.0
    while problems := _leaks(threads_before, sockets_before):
        if time.monotonic() > deadline:
            pytest.fail("test leaked " + "; ".join(problems))
        await asyncio.sleep(0.05)


@pytest.fixture(scope="session")
def broker() -> Iterator[MosquittoBroker]:
    """A Mosquitto shared by tests that only publish and subscribe."""
    with MosquittoBroker() as b:
        yield b


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto for one test, which may stop, kill and restart it."""
    with MosquittoBroker(workdir=tmp_path) as b:
        yield b


# fuzz tests: brief in every run, 50x the examples with --fuzz=long
settings.register_profile("brief", max_examples=200, deadline=None)
settings.register_profile("long", max_examples=10_000, deadline=None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz",
        choices=("brief", "long"),
        default=os.environ.get("CITYNEURON_FUZZ", "brief"),
        help="how long the hypothesis fuzz tests run (long: 10,000 examples each)",
    )


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile(config.getoption("--fuzz"))
    config.addinivalue_line(
        "markers", "allow_leaks: the test deliberately leaves a resource for a later check"
    )
