"""The gateway: builds the node's components from its config and runs them.

One root `asyncio.TaskGroup` owns one supervised task per component. Components start in
dependency order (storage, uplink, consumers, then the drivers that feed them), each
waiting for the previous one to report ready, and stop in reverse order so that what the
drivers produced last is still stored and forwarded: all drivers at once, then the rest
one by one. SIGTERM and SIGINT request that orderly stop; every component gets a bounded
time to finish.

Only the core (the outbox, the uplink, the rules) can end the node: a core component
that keeps failing gives up and the process exits non-zero for systemd to restart it.
Every other component, every driver above all, is restarted with backoff for as long
as the node runs; its failure is reported (/readyz, the status message, the device's
offline event), and the others carry on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
import time
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.api import WriteError
from drivers.sharing import SharedResources
from gateway import __version__
from gateway.authz import AuditLog, CommandAuth, CommandGuard, OperatorKey
from gateway.bus import Bus
from gateway.commands import CommandError, CommandRouter
from gateway.config import NodeConfig
from gateway.devices import DeviceContext, DriverComponent
from gateway.health import HealthServer
from gateway.inspection import DefectStore, InspectionService, InspectionSettings
from gateway.kernel.clock import Clock, SystemClock
from gateway.load import LoadMonitor, load_metrics
from gateway.location import LocationService
from gateway.metrics import (
    MetricSource,
    bus_metrics,
    driver_metrics,
    inspection_metrics,
    model_metrics,
    node_metrics,
    outbox_metrics,
    rule_metrics,
    uplink_metrics,
)
from gateway.nodestate import NodeState
from gateway.outbox import Outbox, Priority
from gateway.plugins import DriverRegistry, load_drivers
from gateway.rules_host import RuleCommands, RuleHost
from gateway.snapshots import SnapshotStore
from gateway.supervisor import Component, RestartPolicy, Supervisor
from gateway.systemd import SystemdNotifier
from gateway.uplink import Uplink
from rules.deploy import RuleDeployer
from rules.engine import RuleEngine
from rules.store import RuleStore

if TYPE_CHECKING:
    from gateway.discovery import Announcement

CORE = frozenset({"outbox", "uplink", "rules"})  # the components whose failure ends the node

# everything else is restarted for as long as the node runs, at most a minute apart; a
# driver that then runs for 10 s has recovered
RESTART_FOREVER = RestartPolicy(give_up=False)
RESTART_DRIVER = RestartPolicy(give_up=False, stable_after=10.0)

logger = logging.getLogger(__name__)


def _write_role(args: dict[str, Any]) -> str:
    """A write needs role write:<device> of its signer."""
    device = args.get("device")
    return f"write:{device}" if isinstance(device, str) else "write:"


class Gateway:
    """A running node: config in, components supervised, orderly shutdown."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        registry: DriverRegistry | None = None,
        clock: Clock | None = None,
        restart_policy: RestartPolicy | None = None,
        driver_policy: RestartPolicy | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        extra_components: Sequence[Component] = (),
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.bus = Bus()
        self.shared = SharedResources()
        self.registry = registry or load_drivers()
        self.restart_policy = restart_policy or RestartPolicy()
        self.driver_policy = driver_policy or RESTART_DRIVER
        self.state = NodeState(config.node.id)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.commands = CommandRouter(
            max_bytes=config.mqtt.max_command_bytes if config.mqtt else 1024 * 1024,
            guard=self._guard(),
        )
        self.drivers: dict[str, DriverComponent] = {}
        self.http: HealthServer | None = None
        self.rules: RuleEngine | None = None
        self._metric_sources: list[MetricSource] = []
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.started_at = time.monotonic()
        self.components: list[Component] = [*self._build(), *extra_components]
        self.commands.register("ping", self._cmd_ping)
        self.commands.register("write", self._cmd_write, needs=_write_role)

    def _guard(self) -> CommandGuard:
        """Authorization and audit of state-changing commands (gateway/authz.py)."""
        from rules.signing import load_public  # noqa: PLC0415 - cryptography only if used

        cfg = self.config
        keys = [
            OperatorKey(k.id, load_public(k.public_key), tuple(k.roles)) for k in cfg.trusted_keys()
        ]
        guard = CommandGuard(
            CommandAuth(
                keys,
                require=cfg.security.require_signed_commands,
                max_lifetime=cfg.security.max_command_lifetime,
            ),
            AuditLog(cfg.security.resolved_audit(cfg.node.data_dir)),
            node=cfg.node.id,
            report=self.bus.publish,
        )
        restored = guard.restore()
        if restored:
            logger.info("commands: %d signed command(s) still within their expiry", restored)
        if not cfg.security.require_signed_commands:
            logger.warning(
                "security.require_signed_commands is off: any broker client can write "
                "points, deploy rules and swap models"
            )
        return guard

    @property
    def supervisors(self) -> list[Supervisor]:
        return self.state.supervisors

    @property
    def ready(self) -> asyncio.Event:
        """Set once every component has started."""
        return self.state.ready

    def _build(self) -> list[Component]:
        """Components in start order: storage, uplink, then the drivers feeding them."""
        cfg = self.config
        components: list[Component] = []
        self.systemd = SystemdNotifier(self.state)
        if self.systemd.enabled:
            components.append(self.systemd)
        self.add_metrics(functools.partial(node_metrics, cfg.node.id, __version__, self.state))
        self.add_metrics(functools.partial(driver_metrics, self.drivers))
        self.add_metrics(functools.partial(bus_metrics, self.bus))
        self.load = LoadMonitor(
            self.bus, lambda: {d: c.driver for d, c in self.drivers.items()}, node=cfg.node.id
        )
        self.add_metrics(functools.partial(load_metrics, self.load))
        if cfg.http.enabled:
            self.http = HealthServer(
                self.state,
                self._metric_sources,
                cfg.http.host,
                cfg.http.port,
                load=self.load.status,
            )
            components.append(self.http)
        ttl = cfg.outbox.ttl
        self.outbox = Outbox(
            cfg.outbox.resolved_path(cfg.node.data_dir),
            node=cfg.node.id,
            bus=self.bus,
            max_bytes=int(cfg.outbox.max_bytes),
            commit_interval=cfg.outbox.commit_interval,
            batch_max=cfg.outbox.batch_max,
            fsync=cfg.outbox.fsync,
            telemetry_format=cfg.mqtt.telemetry_format if cfg.mqtt is not None else 2,
            ttl={
                Priority.ALARM: ttl.alarm,
                Priority.EVENT: ttl.event,
                Priority.TELEMETRY: ttl.telemetry,
            },
        )
        loc = cfg.location
        self.location = LocationService(
            self.bus,
            source=loc.source,
            fixed=loc.fixed.model_dump(exclude_none=True) if loc.fixed else None,
            stale_after=loc.stale_after,
        )
        self.outbox.locate = self.location.snapshot
        self.snapshots = SnapshotStore()
        self.outbox.snapshots = self.snapshots
        components.append(self.outbox)
        self.add_metrics(functools.partial(outbox_metrics, self.outbox))
        if cfg.mqtt is not None:
            self.uplink = Uplink(
                cfg.mqtt,
                node=cfg.node.id,
                groups=cfg.node.groups,
                outbox=self.outbox,
                commands=self.commands,
                state=self.state,
            )
            components.append(self.uplink)
            self.add_metrics(functools.partial(uplink_metrics, self.uplink))
        components.append(self.load)
        if loc.source is not None:
            components.append(self.location)
        components.append(self._build_rules())
        self.inspection: InspectionService | None = None
        if cfg.inspection.enabled:
            components.append(self._build_inspection())
        self.models = None
        if cfg.models.packages:
            from models.registry import ModelRegistry  # noqa: PLC0415 - onnxruntime only if used

            self.models = ModelRegistry(
                cfg.models.packages, threads=cfg.models.threads, watchdog=cfg.models.watchdog
            )
            components.append(self.models)
            self.add_metrics(functools.partial(model_metrics, self.models))
            self.commands.register("models.status", self._cmd_models_status)
            self.commands.register("models.swap", self._cmd_models_swap, needs="models")
        components.extend(self._build_drivers())
        if cfg.discovery.enabled:
            from gateway.discovery import Advertiser  # noqa: PLC0415 - zeroconf only if used

            # last: announcing takes ~1.5 s of multicast probing, which must not delay the
            # first readings, and a node is announced once it serves what it announces
            components.append(Advertiser(self._announcement(), cfg.discovery.interfaces))
        return components

    def _build_drivers(self) -> list[Component]:
        components: list[Component] = []
        for device in self.config.devices:
            if not device.enabled:
                logger.info("device %s is disabled in the config", device.id)
                continue
            driver_cls = self.registry.drivers[device.type]
            ctx = DeviceContext(
                node_id=self.config.node.id,
                device_id=device.id,
                bus=self.bus,
                clock=self.clock,
                shared=self.shared,
                driver_type=device.type,
                models=self.models,
                snapshots=self.snapshots,
                pace=functools.partial(self.load.pace_of, device.id),
            )
            component = DriverComponent(driver_cls(device), ctx, stop_timeout=self.stop_timeout)
            self.drivers[device.id] = component
            components.append(component)
        return components

    def _announcement(self) -> Announcement:
        from gateway.discovery import Announcement  # noqa: PLC0415 - zeroconf only if used

        cfg = self.config
        caps = ["rules"]
        if cfg.mqtt is not None:
            caps.append("uplink")
        if cfg.location.source or cfg.location.fixed:
            caps.append("location")
        if cfg.http.enabled:
            caps.append("metrics")
        return Announcement(
            node=cfg.node.id,
            name=cfg.node.name or "",
            version=__version__,
            port=cfg.http.port if cfg.http.enabled else 0,
            drivers=tuple(d.type for d in cfg.devices),
            caps=tuple(caps),
        )

    def _build_rules(self) -> RuleHost:
        cfg = self.config.rules
        # a bundle is signed by a key with role rules (the same trust store as commands)
        bundle_keys = [
            k for k in self.config.trusted_keys() if any(fnmatchcase("rules", r) for r in k.roles)
        ]
        trusted = {}
        if bundle_keys:
            from rules.signing import load_public  # noqa: PLC0415 - cryptography only if used

            trusted = {k.id: load_public(k.public_key) for k in bundle_keys}
        self.rules = RuleEngine(
            node=self.config.node.id, locate=self.location.snapshot, eval_budget=cfg.max_eval_time
        )
        self.add_metrics(functools.partial(rule_metrics, self.rules))
        self.load.guarded = self.rules.guards  # alarm devices are slowed last under load
        self.deployer = RuleDeployer(
            self.rules,
            RuleStore(self.config.node.data_dir / "rules"),
            trusted=trusted,
            require_signature=cfg.require_signature,
            max_bytes=int(cfg.max_bundle_bytes),
        )
        RuleCommands(self.deployer).register(self.commands)
        self.deployer.load_stored()
        if self.rules.compiled is None and cfg.file is not None:
            self.deployer.load_local(cfg.file)
        return RuleHost(self.rules, self.bus, writer=self.write)

    def _build_inspection(self) -> InspectionService:
        ins = self.config.inspection
        self.inspection = InspectionService(
            self.bus,
            DefectStore(self.config.node.data_dir / "inspection.db"),
            locate=self.location.at,
            settings=InspectionSettings(
                cameras=frozenset(ins.cameras),
                labels=frozenset(ins.labels),
                radius=ins.radius,
                gap=ins.gap,
                min_sightings=ins.min_sightings,
                match_distance=ins.match_distance,
                ahead=ins.ahead,
                major=ins.severity.major,
                critical=ins.severity.critical,
            ),
            snapshots=self.snapshots,
            clock=self.clock.monotonic,
        )
        self.commands.register("inspection.status", self._cmd_inspection_status)
        self.add_metrics(functools.partial(inspection_metrics, self.inspection))
        return self.inspection

    async def _cmd_inspection_status(self, args: dict[str, Any]) -> dict[str, Any]:
        del args
        return self.inspection.status() if self.inspection else {}

    async def _cmd_models_status(self, args: dict[str, Any]) -> dict[str, Any]:
        del args
        return self.models.status() if self.models else {}

    async def _cmd_models_swap(self, args: dict[str, Any]) -> dict[str, Any]:
        """Replace a model with the package in a folder on the node (pushed beforehand)."""
        from models.package import ModelError  # noqa: PLC0415

        name, path = args.get("name"), args.get("path")
        if not isinstance(name, str) or not isinstance(path, str):
            raise CommandError("invalid_args", "models.swap needs args name and path")
        if self.models is None or name not in self.models.packages:
            raise CommandError("unknown_model", f"no model {name!r} on this node")
        directory = await asyncio.to_thread(self._in_model_store, path)
        try:
            model = await self.models.swap(name, directory)
        except ModelError as exc:
            raise CommandError("model_refused", str(exc)) from None
        return {"name": name, "model": model.spec.name, "version": model.spec.version}

    def _in_model_store(self, path: str) -> Path:
        """`path` (relative to the model store, or absolute inside it) as a folder inside
        the store, links resolved; anything else is refused before it is looked at."""
        store = self.config.models.resolved_store(self.config.node.data_dir).resolve()
        if "\0" in path or len(path) > 1024:
            raise CommandError("invalid_args", "path is not a folder name")
        folder = (store / path).resolve()
        if folder == store or not folder.is_relative_to(store):
            raise CommandError(
                "outside_store",
                f"models.swap loads only packages inside the model store {store} "
                "(push the package there first)",
            )
        return folder

    def add_metrics(self, source: MetricSource) -> None:
        """Register a source of Prometheus metric families, read at every scrape."""
        self._metric_sources.append(source)

    async def write(self, device: str, point: str, value: Any) -> None:
        """Write a device point (commands and rule actions); raises WriteError."""
        component = self.drivers.get(device)
        if component is None:
            raise WriteError(device, point, "no such device")
        await component.driver.write(point, value)

    async def _cmd_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "pong": True,
            "version": __version__,
            "uptime": round(time.monotonic() - self.started_at, 3),
            "echo": args.get("echo"),
        }

    async def _cmd_write(self, args: dict[str, Any]) -> dict[str, Any]:
        device, point = args.get("device"), args.get("point")
        if not isinstance(device, str) or not isinstance(point, str) or "value" not in args:
            raise CommandError("invalid_args", "write needs args device, point and value")
        component = self.drivers.get(device)
        if component is None:
            known = ", ".join(sorted(self.drivers)) or "none"
            raise CommandError("unknown_device", f"no device {device!r} (devices: {known})")
        try:
            await component.driver.write(point, args["value"])
        except WriteError as exc:
            raise CommandError("write_refused", str(exc)) from exc
        return {"device": device, "point": point, "value": args["value"]}

    @property
    def stopping(self) -> asyncio.Event:
        """Set once a stop has been requested."""
        return self.state.stopping

    def request_stop(self) -> None:
        """Begin an orderly shutdown (safe to call more than once)."""
        if not self.stopping.is_set():
            logger.info("stopping node %s", self.config.node.id)
            self.stopping.set()

    def _supervisor(self, component: Component) -> Supervisor:
        if isinstance(component, DriverComponent):
            return Supervisor(
                component,
                self.driver_policy,
                clock=self.clock,
                core=False,
                recover_on_ready=False,
                on_recovered=component.ctx.driver_recovered,
            )
        core = component.name in CORE
        policy = self.restart_policy if core else RESTART_FOREVER
        return Supervisor(component, policy, clock=self.clock, core=core)

    async def run(self, *, handle_signals: bool = True) -> None:
        """Run until `request_stop()` (or SIGTERM/SIGINT); raise if a component gives up."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        handle_signals = handle_signals and threading.current_thread() is threading.main_thread()
        if handle_signals:
            for sig in signals:
                loop.add_signal_handler(sig, self.request_stop)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks: list[asyncio.Task[None]] = []
                for component in self.components:
                    sup = self._supervisor(component)
                    self.state.add(sup)
                    tasks.append(tg.create_task(sup.run(), name=component.name))
                    await self._wait_started(sup, tasks[-1])
                    if self.stopping.is_set():
                        break
                if not self.stopping.is_set():
                    self.ready.set()
                    logger.info(
                        "node %s running with %d component(s)",
                        self.config.node.id,
                        len(self.components),
                    )
                await self.stopping.wait()
                started = list(zip(self.supervisors, tasks, strict=True))
                # the drivers together (each is bounded by its stop timeout), then the
                # consumers and the storage, newest first
                drivers = [(s, t) for s, t in started if isinstance(s.component, DriverComponent)]
                async with asyncio.TaskGroup() as stops:
                    for sup, task in drivers:
                        stops.create_task(self._stop_one(sup, task), name=f"stop[{sup.name}]")
                for sup, task in reversed(started):
                    await self._stop_one(sup, task)
        finally:
            self.ready.clear()
            if handle_signals:
                for sig in signals:
                    loop.remove_signal_handler(sig)

    async def _wait_started(self, sup: Supervisor, task: asyncio.Task[None]) -> None:
        """Wait until `sup` is ready, has ended, a stop is requested, or time is up."""
        async with asyncio.TaskGroup() as waits:
            waiters = (
                waits.create_task(sup.started.wait(), name=f"gateway.await-ready[{sup.name}]"),
                waits.create_task(self.stopping.wait(), name="gateway.await-stop"),
            )
            done, _ = await asyncio.wait(
                (*waiters, task), timeout=self.start_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in waiters:
                waiter.cancel()
        if not done:
            logger.warning(
                "component %s not ready after %gs; starting the next ones anyway",
                sup.name,
                self.start_timeout,
            )

    async def _stop_one(self, sup: Supervisor, task: asyncio.Task[None]) -> None:
        if task.done():
            return
        task.cancel()
        # a driver's own stop is bounded by the same timeout (run_abandonable): a little
        # longer here, so that the driver is abandoned rather than waited for twice
        done, _ = await asyncio.wait((task,), timeout=self.stop_timeout + 1.0)
        if not done:
            logger.error("component %s did not stop within %gs", sup.name, self.stop_timeout)
