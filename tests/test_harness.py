"""The test harness itself: the leak guard must fail tests that leave things behind."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py").read_text(encoding="utf-8")

LEAKY = """
import asyncio, socket, threading

async def test_leaks_a_task():
    asyncio.create_task(asyncio.sleep(30), name="forgotten")

def test_leaks_a_socket():
    global KEEP
    KEEP = socket.socket()

def test_leaks_a_thread():
    threading.Thread(target=threading.Event().wait, args=(30,), daemon=True,
                     name="stray").start()

async def test_clean():
    await asyncio.sleep(0)
"""


def test_leaked_tasks_sockets_and_threads_fail_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_leaky=LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=4, errors=3)
    text = result.stdout.str()
    assert "test leaked asyncio tasks: ['forgotten']" in text
    assert "test leaked 1 socket(s)" in text
    assert "test leaked threads: stray" in text
