"""What a long-lived part of the node is, and how its state is seen from outside."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

Ready = Callable[[], None]


class ComponentState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPED = "stopped"
    FAILED = "failed"


class Component(Protocol):
    """A long-lived part of the node (uplink, outbox, a driver, the rule engine)."""

    @property
    def name(self) -> str:
        """Stable name used in logs, task names and health reports."""
        ...

    async def run(self, ready: Ready) -> None:
        """Run until cancelled; call `ready()` once set up. Raising means failure."""
        ...


@dataclass(frozen=True, slots=True)
class ComponentStatus:
    """A component's state as health, readiness and the status message report it."""

    name: str
    state: ComponentState
    core: bool  # a core component (outbox, uplink) failing for good ends the node
    restarts: int = 0
    failures: int = 0
    error: str | None = None  # the last failure, while failing
    failing_since: str | None = None  # UTC ISO time of the first failure of the streak

    def to_dict(self) -> dict[str, object]:
        """As /readyz and the status message list a failing component."""
        return {
            "component": self.name,
            "error": self.error,
            "since": self.failing_since,
            "failures": self.failures,
            "state": self.state.value,
        }

    @property
    def failing(self) -> bool:
        """Failed and not yet shown to have recovered (ready, or running a while)."""
        return self.error is not None
