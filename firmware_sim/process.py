"""Lifecycle shared by the simulator's helper processes (broker, serial line pairs)."""

from __future__ import annotations

import abc
import asyncio
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self


class HelperProcess(abc.ABC):
    """A subprocess with a working directory (its own temporary one unless given),
    started and stopped explicitly or as a context manager."""

    def __init__(self, workdir: Path | None, prefix: str) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def start(self) -> None:
        """Start the process (no-op if running)."""

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        self._proc = subprocess.Popen(  # noqa: S603 - fixed binaries, our own arguments
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # own session: a Ctrl-C meant for the node must not kill its simulated world
            start_new_session=True,
        )
        return self._proc

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._stopped()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash or a power cut would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._stopped()

    def _stopped(self) -> None:  # noqa: B027 - an optional hook, not an abstract method
        """Clean up after the process ended (subclasses)."""

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def until_stopped() -> None:
    """Return once the process gets SIGINT or SIGTERM (a simulator run on its own)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
