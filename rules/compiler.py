"""Compiling a bundle: CEL programs built once, what each rule reads, and state identity."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field

from rules._cel import cel
from rules.bundle import RESERVED, Aggregate, Bundle, BundleError, Rule
from rules.cost import CostError
from rules.cost import check as check_cost

_UNDEFINED = re.compile(r"Undefined variable or function: '([^']+)'")


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to evaluate."""

    rule: Rule
    when: cel.Program
    clear_when: cel.Program | None
    names: frozenset[str]  # identifiers the conditions use
    points: frozenset[str]  # device points the rule reads (conditions and windows)
    uses_points_map: bool
    uses_location: bool
    signature: str  # what must be unchanged for state to survive an update
    _device_re: re.Pattern[str] = field(repr=False, compare=False, default=re.compile(""))

    @property
    def id(self) -> str:
        return self.rule.id

    def applies_to(self, device: str) -> bool:
        return self._device_re.match(device) is not None

    def triggered_by(self, point: str) -> bool:
        return self.uses_points_map or point in self.points


@dataclass(frozen=True)
class CompiledBundle:
    bundle: Bundle
    rules: tuple[CompiledRule, ...]

    @property
    def version(self) -> int:
        return self.bundle.version


def _compile_cel(rule: Rule, what: str, source: str) -> cel.Program:
    try:
        check_cost(source)  # before the parser sees it: nesting and length are bounded
    except CostError as exc:
        raise BundleError(f"rule {rule.id}: {what} {exc}", rule=rule.id, field=what) from None
    try:
        return cel.compile(source)
    except (ValueError, RuntimeError) as exc:
        detail = str(exc).split("\n", 1)[0]
        detail = detail.split(" expecting {", 1)[0]  # the parser's list of every token
        raise BundleError(
            f"rule {rule.id}: {what} does not compile: {detail}", rule=rule.id, field=what
        ) from None


def _signature(rule: Rule) -> str:
    relevant = {
        "trigger": rule.trigger,
        "devices": rule.devices,
        "labels": rule.labels,
        "let": {k: v.model_dump(mode="json") for k, v in rule.let.items()},
        "when": rule.when,
        "clear_when": rule.clear_when,
        "for": rule.for_,
        "clear_for": rule.clear_for,
        "alarm": rule.alarm.kind if rule.alarm else None,
    }
    blob = json.dumps(relevant, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def compile_rule(rule: Rule) -> CompiledRule:
    when = _compile_cel(rule, "when", rule.when)
    clear = _compile_cel(rule, "clear_when", rule.clear_when) if rule.clear_when else None
    names = set(when.variables())
    if clear is not None:
        names |= set(clear.variables())
    lets = set(rule.let)
    window_points = {s.point for s in rule.let.values() if isinstance(s, Aggregate)}
    points = (names - lets - RESERVED) | window_points
    pattern = "|".join(fnmatch.translate(p) for p in rule.devices) or "(?!)"
    return CompiledRule(
        rule=rule,
        when=when,
        clear_when=clear,
        names=frozenset(names),
        points=frozenset(points),
        uses_points_map="points" in names,
        uses_location="location" in names
        or any(getattr(s, "radius_m", None) for s in rule.let.values()),
        signature=_signature(rule),
        _device_re=re.compile(pattern),
    )


def compile_bundle(bundle: Bundle) -> CompiledBundle:
    """Compile every enabled rule; the first error is a `BundleError` naming the rule."""
    return CompiledBundle(
        bundle=bundle, rules=tuple(compile_rule(r) for r in bundle.rules if r.enabled)
    )


def undefined_name(exc: BaseException) -> str | None:
    """The variable a CEL evaluation failed on for lack of data, if that was the cause."""
    match = _UNDEFINED.search(str(exc))
    return match.group(1) if match else None
