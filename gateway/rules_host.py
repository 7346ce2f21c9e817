"""The rule engine and its deployer wired into the node: bus in, events and writes out,
and the ``rules.*`` commands.

rules/ is pure (it is handed records and the time, and hands back events and writes); this
component feeds it from the bus, publishes what it decides, runs its writes through the
drivers, and wakes it when a `for` timer is due.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.bus import Bus, DropPolicy, Subscription, Wake
from gateway.commands import CommandError, CommandRouter
from gateway.kernel.component import Ready
from gateway.kernel.records import Detection, Event, Reading, ReadingBatch, Severity
from rules.deploy import RuleDeployer
from rules.engine import RuleEngine

logger = logging.getLogger(__name__)

Writer = Callable[[str, str, Any], Awaitable[None]]


class RuleHost:
    """Component running a `RuleEngine` on the node's bus."""

    name = "rules"

    def __init__(self, engine: RuleEngine, bus: Bus, writer: Writer | None = None) -> None:
        self.engine = engine
        self.bus = bus
        self.writer = writer
        self._wake = Wake()
        engine.on_change = self._wake.set

    async def run(self, ready: Ready) -> None:
        sub = self.bus.subscribe(
            "rules",
            maxsize=10_000,
            policy=DropPolicy.BACKPRESSURE,
            max_wait=1.0,
            kinds=(Reading, ReadingBatch, Detection),
            # the polls of devices no rule reads only update the engine's values: done as
            # they are published, without waking this task for each
            accept=self._needs_evaluation,
        )
        engine = self.engine
        try:
            async with asyncio.TaskGroup() as tg:
                ready()
                while True:
                    record = await self._next(sub)
                    now = engine.monotonic()
                    if isinstance(record, ReadingBatch):
                        engine.on_batch(record, now)
                    elif isinstance(record, Reading):
                        engine.on_reading(record, now)
                    elif isinstance(record, Detection):
                        engine.on_detection(record, now)
                    engine.run_timers(now)
                    for event in engine.take_events():
                        await self.bus.publish(event)
                    for device, point, value, rule_id in engine.take_writes():
                        tg.create_task(
                            self._write(device, point, value, rule_id),
                            name=f"rules.write[{device}.{point}]",
                        )
        finally:
            sub.close()

    def _needs_evaluation(self, record: object) -> bool:
        return not (isinstance(record, ReadingBatch) and self.engine.note(record))

    async def _next(self, sub: Subscription) -> Reading | ReadingBatch | Detection | None:
        """The next record, or None when a timer is due or the bundle changed."""
        if self._wake.is_set():
            self._wake.clear()
            return None
        deadline = self.engine.next_timer()
        delay = None if deadline is None else max(0.0, deadline - self.engine.monotonic())
        try:
            async with asyncio.timeout(delay):
                batch = await sub.get_batch(1, 0.0, wake=self._wake)
        except TimeoutError:
            return None
        self._wake.clear()
        record = batch[0] if batch else None
        return record if isinstance(record, Reading | ReadingBatch | Detection) else None

    async def _write(self, device: str, point: str, value: Any, rule_id: str) -> None:
        if self.writer is None:
            return
        try:
            await self.writer(device, point, value)
        except Exception as exc:  # noqa: BLE001 - a failed action is reported, not fatal
            logger.warning("rule %s: write %s.%s failed: %s", rule_id, device, point, exc)
            await self.bus.publish(
                Event(
                    kind="rule.action_failed",
                    source=device,
                    severity=Severity.WARNING,
                    message=f"rule {rule_id}: write {device}.{point}={value!r} failed: {exc}",
                    data={"rule": rule_id, "device": device, "point": point},
                    rule=rule_id,
                    node=self.engine.node,
                )
            )


class RuleCommands:
    """The ``rules.deploy``, ``rules.rollback`` and ``rules.status`` commands."""

    def __init__(self, deployer: RuleDeployer) -> None:
        self.deployer = deployer

    def register(self, router: CommandRouter) -> None:
        router.register("rules.deploy", self.deploy, needs="rules")
        router.register("rules.rollback", self.rollback, needs="rules")
        router.register("rules.status", self.status)

    async def deploy(self, args: dict[str, Any]) -> dict[str, Any]:
        text = args.get("bundle")
        if not isinstance(text, str) or not text.strip():
            raise CommandError("invalid_args", "rules.deploy needs args.bundle (the bundle text)")
        signature, key = args.get("signature"), args.get("key")
        if signature is not None and not isinstance(signature, str):
            raise CommandError("invalid_args", "signature must be a base64 string")
        if key is not None and not isinstance(key, str):
            raise CommandError("invalid_args", "key must be a key id string")
        return await self.deployer.deploy(text, signature, key)  # refusals: DeployError

    async def rollback(self, args: dict[str, Any]) -> dict[str, Any]:
        del args
        return await self.deployer.rollback()

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        del args
        return self.deployer.status()
