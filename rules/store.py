"""Deployed bundles on disk: current and previous, written atomically, and the highest
version ever accepted (so that an old bundle replayed is refused even after a rollback)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Deployed:
    """A bundle as it was deployed: its exact text and the signature that came with it."""

    text: str
    signature: str | None
    key: str | None
    version: int
    deployed_at: str


class RuleStore:
    """`current.json`, `previous.json` and `state.json` in one directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self.dir / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # a damaged file is set aside, not trusted and not silently deleted
            path.replace(path.with_suffix(".damaged"))
            return None
        return data if isinstance(data, dict) else None

    def _write(self, name: str, data: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.dir / name)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself must survive a power cut
        finally:
            os.close(fd)

    def current(self) -> Deployed | None:
        data = self._read("current.json")
        return Deployed(**data) if data else None

    def previous(self) -> Deployed | None:
        data = self._read("previous.json")
        return Deployed(**data) if data else None

    @property
    def max_version(self) -> int:
        state = self._read("state.json") or {}
        value = state.get("max_version", 0)
        return value if isinstance(value, int) else 0

    def save(self, deployed: Deployed) -> None:
        """Make `deployed` current; the current one becomes previous."""
        current = self._read("current.json")
        if current is not None:
            self._write("previous.json", current)
        self._write("current.json", asdict(deployed))
        self._write("state.json", {"max_version": max(self.max_version, deployed.version)})

    def rollback(self) -> Deployed:
        """Swap current and previous; raises LookupError when there is no previous."""
        previous = self._read("previous.json")
        if previous is None:
            raise LookupError("there is no previous bundle to roll back to")
        current = self._read("current.json")
        self._write("current.json", previous)
        if current is not None:
            self._write("previous.json", current)
        return Deployed(**previous)
