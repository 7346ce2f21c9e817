"""A real Mosquitto broker on a free local port, for tests, benchmarks and the demo."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

from firmware_sim.pki import Pki
from firmware_sim.process import HelperProcess


class BrokerStartError(RuntimeError):
    """Mosquitto is not installed or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )
    if found is None:
        raise BrokerStartError(
            "mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)"
        )
    return found


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class MosquittoBroker(HelperProcess):
    """Start, stop and restart a private Mosquitto on `port` (same port across restarts)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        workdir: Path | None = None,
        extra_config: str = "",
        persistence: bool = False,
        tls: Pki | None = None,
        require_certificate: bool = False,
        anonymous: bool = True,
    ) -> None:
        super().__init__(workdir, "cityneuron-broker-")
        self.host = host
        self.port = port or free_port(host)
        self.extra_config = extra_config
        self.persistence = persistence
        self.tls = tls
        self.require_certificate = require_certificate
        self.anonymous = anonymous
        # with TLS, a second listener: TLS on `tls_port`, plain on `port` (for observers)
        self.tls_port = free_port(host) if tls is not None else None
        self.log_path = self.workdir / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            + self._tls_listener()
            + f"allow_anonymous {'true' if self.anonymous else 'false'}\n"
            + (
                f"persistence true\npersistence_location {self.workdir}/\n"
                if self.persistence
                else "persistence false\n"
            )
            + "max_queued_messages 100000\n"
            # as root, mosquitto would switch to its own user, which cannot write here
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"{self.extra_config}\n",
            encoding="utf-8",
        )
        self._spawn([mosquitto_binary(), "-c", str(conf)])
        if not wait_for_port(self.host, self.port, timeout):
            self.stop()
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise BrokerStartError(f"mosquitto did not listen on {self.port}: {log[-500:]}")

    def _tls_listener(self) -> str:
        if self.tls is None:
            return ""
        return (
            f"listener {self.tls_port} {self.host}\n"
            f"cafile {self.tls.ca_cert}\ncertfile {self.tls.server_cert}\n"
            f"keyfile {self.tls.server_key}\n"
            f"require_certificate {'true' if self.require_certificate else 'false'}\n"
        )

    def restart(self) -> None:
        self.stop()
        self.start()
