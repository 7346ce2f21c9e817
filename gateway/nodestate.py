"""The node's state as its supervised components report it.

Health endpoints, systemd notification and the retained status message read this small
object (through the `Readiness` protocol), never the whole node.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gateway.kernel.component import ComponentState, ComponentStatus
from gateway.supervisor import Supervisor

MAX_REPORTED = 20  # failing components listed in the status message, at most


class Readiness(Protocol):
    """What /healthz, /readyz, systemd and the status message need to know."""

    @property
    def node_id(self) -> str: ...

    def component_states(self) -> list[ComponentStatus]:
        """Every supervised component, in start order."""
        ...

    def failing(self) -> list[ComponentStatus]:
        """Components that are failing right now (restarting with backoff, or given up)."""
        ...

    def is_ready(self) -> bool:
        """Started, not stopping, and every core component running."""
        ...

    def has_failed(self) -> bool:
        """A core component gave up: the node is about to exit."""
        ...

    async def wait_ready(self) -> None: ...

    async def wait_stopping(self) -> None: ...

    async def wait_changed(self) -> None:
        """Return the next time a component starts or stops failing."""
        ...

    def stopping_requested(self) -> bool: ...


class NodeState:
    """`Readiness` of a running node, fed by its supervisors."""

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self.supervisors: list[Supervisor] = []
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def node_id(self) -> str:
        return self._node_id

    def add(self, supervisor: Supervisor) -> None:
        self.supervisors.append(supervisor)
        supervisor.on_change = self.changed

    def component_states(self) -> list[ComponentStatus]:
        return [s.status() for s in self.supervisors]

    def failing(self) -> list[ComponentStatus]:
        return [c for c in self.component_states() if c.failing]

    def is_ready(self) -> bool:
        if not self.ready.is_set() or self.stopping.is_set():
            return False
        return all(
            c.state in (ComponentState.RUNNING, ComponentState.STOPPED)
            for c in self.component_states()
            if c.core
        )

    def has_failed(self) -> bool:
        return any(s.state is ComponentState.FAILED and s.core for s in self.supervisors)

    async def wait_ready(self) -> None:
        await self.ready.wait()

    async def wait_stopping(self) -> None:
        await self.stopping.wait()

    def stopping_requested(self) -> bool:
        return self.stopping.is_set()

    def changed(self) -> None:
        """Wake whoever waits in `wait_changed` (called by the supervisors)."""
        # each wait holds the event of its time: set it, and later waits get a new one
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()
