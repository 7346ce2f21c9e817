"""Serial line pairs on pseudo-terminals (socat), like a USB-RS485 adapter and its device."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self


class PtyError(RuntimeError):
    """socat is missing or did not create the pair."""


class PtyPair:
    """Two connected pseudo-terminals: open `device` in the simulator, `host` in the node.

    Both ends have stable paths (symlinks, like ``/dev/serial/by-id/...``). `unplug()`
    makes them vanish and `replug()` brings a new pair up under the same names.
    """

    def __init__(self, workdir: Path | None = None, name: str = "tty") -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cityneuron-pty-")
            workdir = Path(self._tmp.name)
        self.host = workdir / f"{name}-host"
        self.device = workdir / f"{name}-device"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5.0) -> None:
        socat = shutil.which("socat")
        if socat is None:
            raise PtyError("socat is not installed (Debian/Ubuntu: apt-get install socat)")
        self._proc = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
            [
                socat,
                f"pty,raw,echo=0,link={self.device}",
                f"pty,raw,echo=0,link={self.host}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # own session: a Ctrl-C meant for the node must not kill its simulated world
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not (self.host.exists() and self.device.exists()):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.stop()
                raise PtyError("socat did not create the pseudo-terminal pair")
            time.sleep(0.01)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for link in (self.host, self.device):
            link.unlink(missing_ok=True)

    def unplug(self) -> None:
        """The device vanishes (its paths disappear), as when a USB adapter is pulled."""
        self.stop()

    def replug(self) -> None:
        self.start()

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
