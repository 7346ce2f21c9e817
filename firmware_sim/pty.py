"""Serial line pairs on pseudo-terminals (socat), like a USB-RS485 adapter and its device."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from firmware_sim.process import HelperProcess


class PtyError(RuntimeError):
    """socat is missing or did not create the pair."""


class PtyPair(HelperProcess):
    """Two connected pseudo-terminals: open `device` in the simulator, `host` in the node.

    Both ends have stable paths (symlinks, like ``/dev/serial/by-id/...``). `unplug()`
    makes them vanish and `replug()` brings a new pair up under the same names.
    """

    def __init__(self, workdir: Path | None = None, name: str = "tty") -> None:
        super().__init__(workdir, "cityneuron-pty-")
        self.host = self.workdir / f"{name}-host"
        self.device = self.workdir / f"{name}-device"

    def start(self, timeout: float = 5.0) -> None:
        socat = shutil.which("socat")
        if socat is None:
            raise PtyError("socat is not installed (Debian/Ubuntu: apt-get install socat)")
        proc = self._spawn(
            [socat, f"pty,raw,echo=0,link={self.device}", f"pty,raw,echo=0,link={self.host}"]
        )
        deadline = time.monotonic() + timeout
        while not (self.host.exists() and self.device.exists()):
            if time.monotonic() > deadline or proc.poll() is not None:
                self.stop()
                raise PtyError("socat did not create the pseudo-terminal pair")
            time.sleep(0.01)

    def _stopped(self) -> None:
        for link in (self.host, self.device):
            link.unlink(missing_ok=True)

    def unplug(self) -> None:
        """The device vanishes (its paths disappear), as when a USB adapter is pulled."""
        self.stop()

    def replug(self) -> None:
        self.start()
