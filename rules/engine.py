"""The rule engine: evaluates compiled rules as readings and detections arrive.

Only the rules that read the point that changed are evaluated (an index from device and
point to rules, built lazily per bundle). Each rule has an *instance* per device it applies
to, holding its temporal state: since when its condition holds (`for`), whether its alarm
is raised, when it last fired (throttling) and cleared (re-arming). Instances and windows
are keyed by rule id and survive a bundle swap when the rule's condition, windows and
timing are unchanged (its `signature`); everything else starts afresh.

A condition that cannot be evaluated because data is missing (a point not yet reported,
an empty window, no GPS fix for a radius) counts as false; any evaluation problem is
reported once per rule and device as a `rule.error` event, never raised.

Expressions are bounded statically when compiled (rules/cost.py); at run time one
evaluation taking longer than `eval_budget` disables its rule (reported as `rule.error`
with `disabled: true`, listed in `disabled`) and the other rules keep running.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.kernel.records import Detection, Event, Reading, ReadingBatch, Severity, Value
from rules.aggregates import DetectionLog, Seen, Window, make_window
from rules.bundle import Aggregate, DetectionCount
from rules.compiler import CompiledBundle, CompiledRule, undefined_name

logger = logging.getLogger(__name__)

Locator = Callable[[], dict[str, Any] | None]

MAX_REPORTED_ERRORS = 1000
EVAL_BUDGET = 0.05  # seconds one evaluation of one rule may take
_TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Instance:
    """The state of one rule for one device (or camera)."""

    active: bool = False  # fired and not yet cleared/re-armed
    since: float | None = None  # condition true since (pending `for`)
    clear_since: float | None = None
    last_fire: float | None = None
    cleared_at: float | None = None
    fired: int = 0
    suppressed: int = 0


@dataclass
class EngineStats:
    evaluations: int = 0
    fired: int = 0
    cleared: int = 0
    suppressed: int = 0
    missing: int = 0
    errors: int = 0
    swaps: int = 0
    disabled: int = 0  # rules disabled for running over the time budget


@dataclass(order=True)
class _Timer:
    at: float
    seq: int
    key: tuple[str, str] = field(compare=False)
    since: float = field(compare=False)
    clearing: bool = field(compare=False)


class RuleEngine:
    """Runs the current rule bundle over the readings and detections it is given.

    Pure: it takes records through `on_reading`/`on_detection`, is told the time, and
    hands back what it decided (`take_events`, `take_writes`); the daemon wires it to the
    bus, the outbox and the drivers (gateway/rules_host.py)."""

    def __init__(
        self,
        *,
        node: str = "",
        locate: Locator | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] | None = None,
        eval_budget: float = EVAL_BUDGET,
    ) -> None:
        self.node = node
        # one evaluation taking longer disables its rule (the event loop waited for it)
        self.eval_budget = eval_budget
        self.disabled: dict[str, str] = {}  # rule id -> why, until a bundle changes it
        self.locate = locate
        self.monotonic = monotonic
        # called when the next timer may have moved (a swap, a new `for`): whoever waits
        # for the next timer looks again
        self.on_change = on_change or _nothing
        self.compiled: CompiledBundle | None = None
        self.values: dict[str, dict[str, Value]] = {}
        self.instances: dict[tuple[str, str], Instance] = {}
        self.windows: dict[tuple[str, str, str], Window] = {}
        self.detections = DetectionLog()
        self.stats = EngineStats()
        self._index: dict[tuple[str, str], list[CompiledRule]] = {}
        self._device_rules: dict[str, list[CompiledRule]] = {}
        self._by_id: dict[str, CompiledRule] = {}
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        self._reported: set[tuple[str, str, str]] = set()
        self._outbox: list[Event] = []  # events made during an evaluation, published after
        self._writes: list[tuple[str, str, Any, str]] = []

    # --- bundle ------------------------------------------------------------------------

    @property
    def version(self) -> int | None:
        return self.compiled.version if self.compiled else None

    def swap(self, compiled: CompiledBundle | None) -> None:
        """Make `compiled` the running bundle at once, keeping the state of unchanged rules."""
        old = self._by_id
        keep = {
            r.id
            for r in (compiled.rules if compiled else ())
            if r.id in old and old[r.id].signature == r.signature
        }
        self.disabled = {k: v for k, v in self.disabled.items() if k in keep}
        self.instances = {k: v for k, v in self.instances.items() if k[0] in keep}
        self.windows = {k: v for k, v in self.windows.items() if k[0] in keep}
        self._timers = [t for t in self._timers if t.key[0] in keep]
        heapq.heapify(self._timers)
        self.compiled = compiled
        self._by_id = {r.id: r for r in compiled.rules} if compiled else {}
        self._index = {}
        self._device_rules = {}
        self.stats.swaps += 1
        # new and changed rules look at the current values at once, not at the next change
        now = self.monotonic()
        for rule in compiled.rules if compiled else ():
            if rule.id in keep or rule.rule.trigger != "reading":
                continue
            for device in list(self.values):
                if rule.applies_to(device):
                    self._evaluate(rule, device, now, extra=None)
        self.on_change()
        logger.info(
            "rules: running bundle %s (%d rules, state kept for %d)",
            compiled.version if compiled else None,
            len(self._by_id),
            len(keep),
        )

    def _reading_rules_of(self, device: str) -> list[CompiledRule]:
        """The rules a reading of `device` may trigger (found once per device)."""
        mine = self._device_rules.get(device)
        if mine is None:
            mine = self._device_rules[device] = [
                r
                for r in (self.compiled.rules if self.compiled else ())
                if r.rule.trigger == "reading"
                and r.applies_to(device)
                and r.id not in self.disabled
            ]
        return mine

    def guards(self, device: str) -> bool:
        """Whether an alarm rule reads `device` (its polls are slowed last under load)."""
        return any(r.rule.alarm is not None for r in self._reading_rules_of(device))

    def _rules_for(self, device: str, point: str) -> list[CompiledRule]:
        key = (device, point)
        rules = self._index.get(key)
        if rules is None:
            rules = self._index[key] = [
                r for r in self._reading_rules_of(device) if r.triggered_by(point)
            ]
        return rules

    # --- input -------------------------------------------------------------------------

    def on_reading(self, reading: Reading, now: float | None = None) -> None:
        """Take a reading into account and evaluate the rules that read it."""
        now = self.monotonic() if now is None else now
        device_values = self.values.setdefault(reading.device, {})
        device_values[reading.point] = reading.value
        rules = self._rules_for(reading.device, reading.point)
        for rule in rules:
            self._feed_windows(rule, reading, now)
        for rule in rules:
            if rule.id not in self.disabled:
                self._evaluate(rule, reading.device, now, extra=None)

    def note(self, batch: ReadingBatch) -> bool:
        """Take in the values of a poll no rule is triggered by, and say so (True); False
        when some rule reads this device: then hand the batch to `on_batch`."""
        device = batch.device
        if self._reading_rules_of(device):
            return False
        self.values.setdefault(device, {}).update(zip(batch.points, batch.values, strict=True))
        return True

    def on_batch(self, batch: ReadingBatch, now: float | None = None) -> None:
        """Take one poll's readings into account: the device's values first (all measured
        at once), then the rules each reading triggers, in the batch's order."""
        now = self.monotonic() if now is None else now
        device = batch.device
        self.values.setdefault(device, {}).update(zip(batch.points, batch.values, strict=True))
        if not self._reading_rules_of(device):
            return  # no rule reads this device: nothing to evaluate
        for reading in batch.readings():
            rules = self._rules_for(device, reading.point)
            for rule in rules:
                self._feed_windows(rule, reading, now)
            for rule in rules:
                if rule.id not in self.disabled:
                    self._evaluate(rule, device, now, extra=None)

    def _feed_windows(self, rule: CompiledRule, reading: Reading, now: float) -> None:
        value = reading.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        for name, spec in rule.rule.let.items():
            if isinstance(spec, Aggregate) and spec.point == reading.point:
                key = (rule.id, reading.device, name)
                window = self.windows.get(key)
                if window is None:
                    window = self.windows[key] = make_window(spec)
                window.add(now, float(value))

    def on_detection(self, det: Detection, now: float | None = None) -> None:
        now = self.monotonic() if now is None else now
        here = self._here()
        self.detections.add(Seen(now, det.label, det.score, *(here or (None, None))))
        extra = {
            "label": det.label,
            "score": det.score,
            "box": list(det.box),
            "camera": det.camera,
            "model": det.model,
        }
        for rule in self.compiled.rules if self.compiled else ():
            if rule.rule.trigger != "detection" or not rule.applies_to(det.camera):
                continue
            if rule.id in self.disabled:
                continue
            if rule.rule.labels and det.label not in rule.rule.labels:
                continue
            self._evaluate(rule, det.camera, now, extra=extra, detection=det)

    def _here(self) -> tuple[float, float] | None:
        loc = self.locate() if self.locate else None
        if loc and loc.get("valid") and "lat" in loc and "lon" in loc:
            return float(loc["lat"]), float(loc["lon"])
        return None

    # --- evaluation --------------------------------------------------------------------

    def _variables(
        self, rule: CompiledRule, device: str, now: float, extra: dict[str, Any] | None
    ) -> dict[str, Any]:
        values = self.values.get(device, {})
        env: dict[str, Any] = {k: v for k, v in values.items() if k in rule.names}
        if rule.uses_points_map:
            env["points"] = dict(values)
        env["device"] = device
        if "now" in rule.names:
            env["now"] = time.time()
        if rule.uses_location:
            env["location"] = (self.locate() if self.locate else None) or {}
        if extra:
            env.update(extra)
        for name, spec in rule.rule.let.items():
            if isinstance(spec, DetectionCount):
                value = self.detections.count(spec, now, self._here())
            else:
                window = self.windows.get((rule.id, device, name))
                value = window.value(now) if window else None
            if value is not None:
                env[name] = value
        return env

    def _check(self, rule: CompiledRule, program: Any, device: str, env: dict[str, Any]) -> bool:
        self.stats.evaluations += 1
        started = time.perf_counter()
        try:
            result = program.execute(env)
        except (RuntimeError, ValueError, TypeError) as exc:
            self._timed(rule, device, time.perf_counter() - started)
            missing = undefined_name(exc)
            if missing is not None:
                self.stats.missing += 1
                return False
            self._report_error(rule, device, f"evaluation failed: {exc}")
            return False
        if self._timed(rule, device, time.perf_counter() - started):
            return False
        if not isinstance(result, bool):
            self._report_error(rule, device, f"condition gave {result!r}, not true/false")
            return False
        return result

    def _evaluate(
        self,
        rule: CompiledRule,
        device: str,
        now: float,
        extra: dict[str, Any] | None,
        detection: Detection | None = None,
    ) -> None:
        key = (rule.id, device)
        inst = self.instances.get(key)
        if inst is None:
            inst = self.instances[key] = Instance()
        env = self._variables(rule, device, now, extra)
        r = rule.rule
        if inst.active and r.alarm is not None:
            # a raised alarm waits for its clear condition (hysteresis) or `not when`
            cleared = (
                self._check(rule, rule.clear_when, device, env)
                if rule.clear_when is not None
                else not self._check(rule, rule.when, device, env)
            )
            if not cleared:
                inst.clear_since = None
            elif r.clear_for <= 0:
                self._clear(rule, device, inst, env, now)
            elif inst.clear_since is None:
                inst.clear_since = now
                self._schedule(now + r.clear_for, key, now, clearing=True)
            return
        holds = self._check(rule, rule.when, device, env)
        if not holds:
            inst.since = None
            if inst.active:  # an event rule re-arms when its condition goes false
                inst.active = False
                inst.cleared_at = now
            return
        if inst.active:
            return  # already fired for this episode
        if r.for_ <= 0:
            self._fire(rule, device=device, inst=inst, env=env, now=now, detection=detection)
        elif inst.since is None:
            inst.since = now
            self._schedule(now + r.for_, key, now, clearing=False)

    def _schedule(self, at: float, key: tuple[str, str], since: float, *, clearing: bool) -> None:
        heapq.heappush(self._timers, _Timer(at, next(self._seq), key, since, clearing))
        self.on_change()

    def run_timers(self, now: float | None = None) -> None:
        """Fire `for` conditions and clear `clear_for` alarms whose time has come."""
        now = self.monotonic() if now is None else now
        while self._timers and self._timers[0].at <= now:
            timer = heapq.heappop(self._timers)
            rule = self._by_id.get(timer.key[0])
            inst = self.instances.get(timer.key)
            if rule is None or inst is None or rule.id in self.disabled:
                continue
            device = timer.key[1]
            env = self._variables(rule, device, now, None)
            if timer.clearing:
                if inst.active and inst.clear_since == timer.since:
                    self._clear(rule, device, inst, env, now)
            elif not inst.active and inst.since == timer.since:
                self._fire(rule, device=device, inst=inst, env=env, now=now, detection=None)

    def next_timer(self) -> float | None:
        return self._timers[0].at if self._timers else None

    # --- actions -----------------------------------------------------------------------

    def _fire(
        self,
        rule: CompiledRule,
        *,
        device: str,
        inst: Instance,
        env: dict[str, Any],
        now: float,
        detection: Detection | None,
    ) -> None:
        r = rule.rule
        inst.since = None
        if r.alarm is not None and inst.cleared_at is not None and now - inst.cleared_at < r.rearm:
            inst.suppressed += 1
            self.stats.suppressed += 1
            return  # not re-armed yet
        if inst.last_fire is not None and now - inst.last_fire < r.throttle:
            inst.suppressed += 1
            self.stats.suppressed += 1
            inst.active = True  # this episode counts as handled
            return
        inst.active = True
        inst.last_fire = now
        inst.fired += 1
        self.stats.fired += 1
        data = _event_data(env)
        data["device"] = device
        data["bundle"] = self.version
        if detection is not None:
            data["detection"] = detection.to_dict()
        location = self.locate() if self.locate else None
        words = {**self.values.get(device, {}), **env}  # messages may name any point
        if r.alarm is not None:
            data["state"] = "raised"
            self._emit(
                f"alarm.{r.alarm.kind}",
                r=r,
                device=device,
                message=_render(r.alarm.message, words),
                data=data,
                location=location,
                detection=detection,
            )
        if r.event is not None:
            self._emit(
                r.event.kind,
                r=r,
                device=device,
                message=_render(r.event.message, words),
                data=data,
                location=location,
                detection=detection,
            )
        if r.write is not None:
            target = r.write.device or device
            self._writes.append((target, r.write.point, r.write.value, rule.id))

    def _clear(
        self, rule: CompiledRule, device: str, inst: Instance, env: dict[str, Any], now: float
    ) -> None:
        r = rule.rule
        if r.alarm is None:
            return  # only alarms clear
        inst.active = False
        inst.clear_since = None
        inst.cleared_at = now
        self.stats.cleared += 1
        words = {**self.values.get(device, {}), **env}
        data = _event_data(env)
        data.update(device=device, bundle=self.version, state="cleared")
        location = self.locate() if self.locate else None
        self._outbox.append(
            Event(
                kind=f"alarm.{r.alarm.kind}",
                source=device,
                severity=Severity.INFO,
                message=f"cleared: {_render(r.alarm.message, words)}".rstrip(": "),
                data=data,
                rule=r.id,
                location=location,
                node=self.node,
            )
        )

    def _emit(
        self,
        kind: str,
        *,
        r: Any,
        device: str,
        message: str,
        data: dict[str, Any],
        location: dict[str, Any] | None,
        detection: Detection | None,
    ) -> None:
        self._outbox.append(
            Event(
                kind=kind,
                source=device,
                severity=r.severity,
                message=message,
                data=dict(data),
                rule=r.id,
                location=location,
                snapshot=detection.frame_id if detection is not None else None,
                node=self.node,
            )
        )

    def _timed(self, rule: CompiledRule, device: str, elapsed: float) -> bool:
        """Disable `rule` when one evaluation took longer than the budget; True if so."""
        if elapsed <= self.eval_budget or rule.id in self.disabled:
            return rule.id in self.disabled
        why = (
            f"one evaluation took {elapsed * 1000:.0f} ms, over the budget of "
            f"{self.eval_budget * 1000:.0f} ms; disabled until a bundle changes it"
        )
        self.disabled[rule.id] = why
        self._index = {}
        self._device_rules = {}
        self._timers = [t for t in self._timers if t.key[0] != rule.id]
        heapq.heapify(self._timers)
        self.stats.disabled += 1
        self._report_error(rule, device, why, disabled=True)
        return True

    def _report_error(
        self, rule: CompiledRule, device: str, message: str, *, disabled: bool = False
    ) -> None:
        self.stats.errors += 1
        key = (rule.id, device, message[:200])
        if not disabled and (key in self._reported or len(self._reported) >= MAX_REPORTED_ERRORS):
            return
        self._reported.add(key)
        logger.warning("rule %s on %s: %s", rule.id, device, message)
        self._outbox.append(
            Event(
                kind="rule.error",
                source=device,
                severity=Severity.WARNING,
                message=f"rule {rule.id}: {message}",
                data={
                    "rule": rule.id,
                    "device": device,
                    "bundle": self.version,
                    **({"disabled": True} if disabled else {}),
                },
                rule=rule.id,
                node=self.node,
            )
        )

    def take_events(self) -> list[Event]:
        """Events produced since the last call (for the run loop and for tests)."""
        out, self._outbox = self._outbox, []
        return out

    def take_writes(self) -> list[tuple[str, str, Any, str]]:
        out, self._writes = self._writes, []
        return out

    # --- dry run -----------------------------------------------------------------------

    def dry_run(self, compiled: CompiledBundle) -> list[dict[str, Any]]:
        """Evaluate `compiled` against the current values without touching any state.

        Returns, per rule and device, whether it holds now (``holds: None`` with the
        ``missing`` variable when data is lacking); raises `ValueError` for an evaluation
        error that is not just missing data (a type error, a bad function), naming the rule.
        """
        saved_outbox, saved_reported = self._outbox, set(self._reported)
        results: list[dict[str, Any]] = []
        try:
            for rule in compiled.rules:
                if rule.rule.trigger != "reading":
                    continue
                for device in sorted(self.values):
                    if not rule.applies_to(device):
                        continue
                    env = self._variables(rule, device, self.monotonic(), None)
                    try:
                        holds = rule.when.execute(env)
                    except (RuntimeError, ValueError, TypeError) as exc:
                        missing = undefined_name(exc)
                        if missing is not None:
                            results.append(
                                {
                                    "rule": rule.id,
                                    "device": device,
                                    "holds": None,
                                    "missing": missing,
                                }
                            )
                            continue
                        raise ValueError(f"rule {rule.id} on {device}: {exc}") from None
                    if not isinstance(holds, bool):
                        raise ValueError(  # noqa: TRY004 - a refusal reason, not a type check
                            f"rule {rule.id} on {device}: condition gave {holds!r}, not true/false"
                        )
                    results.append({"rule": rule.id, "device": device, "holds": holds})
        finally:
            self._outbox, self._reported = saved_outbox, saved_reported
        return results


def _nothing() -> None:
    pass


def _event_data(env: dict[str, Any]) -> dict[str, Any]:
    """The variables worth recording with an event (plain values only)."""
    return {
        k: v
        for k, v in env.items()
        if k not in ("points", "location", "device", "box")
        and (v is None or isinstance(v, bool | int | float | str))
    }


def _render(template: str, env: dict[str, Any]) -> str:
    """Insert {name} variables; unknown names stay visible as {name}. No attribute access."""

    def sub(match: re.Match[str]) -> str:
        value = env.get(match.group(1))
        if value is None:
            return match.group(0)
        return f"{value:g}" if isinstance(value, float) else str(value)

    return _TEMPLATE.sub(sub, template)
