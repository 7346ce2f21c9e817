"""The rule bundle: a versioned document of rules, in YAML or JSON.

A rule applies to every device its `devices` patterns match (or to detections); its
condition is a CEL expression over the device's current readings (by point name), the
variables it declares in `let` (window aggregates, rates, detection counts), `device`,
`location` and `now`. See docs/rules.md.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.kernel.durations import Duration
from gateway.kernel.records import Severity
from gateway.kernel.validation import describe
from gateway.kernel.yamlsource import SourceError, load_text, published_schema

RULE_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
KIND = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED = {"device", "location", "now", "r", "points", "label", "score", "box", "camera", "model"}
MAX_RULES = 5000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Aggregate(_Model):
    """A value computed over a time window of one point of the rule's device."""

    fn: Literal["avg", "min", "max", "sum", "count", "rate", "delta"] = Field(
        description="avg/min/max/sum/count of the samples in the window; rate: change per "
        "second from the oldest to the newest sample; delta: newest minus oldest."
    )
    point: str = Field(description="The point the samples come from.")
    over: Duration = Field(gt=0, le=7 * 86400, description="Window length, e.g. 60s, 10m.")
    window: Literal["sliding", "tumbling"] = Field(
        default="sliding",
        description="sliding: the last `over` seconds; tumbling: fixed consecutive windows, "
        "the value of the last complete one.",
    )


class DetectionCount(_Model):
    """How many detections were seen recently, optionally near the node's position."""

    fn: Literal["detections"] = Field(description="Count detections.")
    labels: list[str] = Field(default_factory=list, description="Labels counted (all if empty).")
    within: Duration = Field(gt=0, le=86400, description="Time window.")
    radius_m: float | None = Field(
        default=None, gt=0, description="Only detections made within this distance of here."
    )
    min_score: float = Field(default=0.0, ge=0, le=1, description="Ignore weaker detections.")


Let = Annotated[Aggregate | DetectionCount, Field(discriminator="fn")]


class AlarmAction(_Model):
    kind: str = Field(pattern=KIND, description="Alarm name; events are alarm.<kind>.")
    message: str = Field(default="", description="Text; {name} inserts a variable.")


class EventAction(_Model):
    kind: str = Field(pattern=KIND, description="Event kind (topic events/<kind>).")
    message: str = Field(default="", description="Text; {name} inserts a variable.")


class WriteAction(_Model):
    device: str | None = Field(
        default=None, description="Device to write; the rule's own if unset."
    )
    point: str = Field(description="Writable point.")
    value: bool | int | float | str = Field(description="Value to write.")


class Rule(_Model):
    """One rule."""

    id: str = Field(pattern=RULE_ID, description="Stable id; state survives updates by id.")
    description: str | None = Field(default=None, description="What the rule is for.")
    enabled: bool = Field(default=True, description="Set false to keep but not run it.")
    trigger: Literal["reading", "detection"] = Field(
        default="reading", description="What triggers evaluation."
    )
    devices: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Device id patterns (shell-style, e.g. manhole-*) the rule applies to; "
        "for detection rules, camera id patterns.",
    )
    labels: list[str] = Field(
        default_factory=list, description="Detection rules: labels that trigger it (all if empty)."
    )
    let: dict[str, Let] = Field(
        default_factory=dict, description="Named window aggregates usable in conditions."
    )
    when: str = Field(min_length=1, max_length=2000, description="CEL condition that fires it.")
    clear_when: str | None = Field(
        default=None,
        max_length=2000,
        description="CEL condition that clears an alarm (hysteresis); `not when` if unset.",
    )
    for_: Duration = Field(
        default=0.0, alias="for", ge=0, le=86400, description="Condition must hold this long."
    )
    clear_for: Duration = Field(
        default=0.0, ge=0, le=86400, description="Clear condition must hold this long."
    )
    throttle: Duration = Field(
        default=0.0, ge=0, description="At most one event per this interval (per device)."
    )
    rearm: Duration = Field(
        default=0.0,
        ge=0,
        description="An alarm must stay clear this long before it can fire again.",
    )
    severity: Severity = Field(default=Severity.WARNING, description="Severity of its events.")
    alarm: AlarmAction | None = Field(default=None, description="Raise/clear an alarm.")
    event: EventAction | None = Field(default=None, description="Emit an event when it fires.")
    write: WriteAction | None = Field(
        default=None, description="Write a device point when it fires."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.alarm is None and self.event is None and self.write is None:
            raise ValueError(f"rule {self.id}: needs an action (alarm, event or write)")
        if (self.clear_when is not None or self.clear_for) and self.alarm is None:
            raise ValueError(f"rule {self.id}: clear_when/clear_for only make sense with alarm")
        for name, spec in self.let.items():
            if not IDENT.match(name) or name in RESERVED:
                raise ValueError(f"rule {self.id}: let name {name!r} is not a usable variable")
            if self.trigger == "detection" and isinstance(spec, Aggregate):
                raise ValueError(f"rule {self.id}: detection rules can only count detections")
        if self.trigger == "reading" and self.labels:
            raise ValueError(f"rule {self.id}: labels are for detection rules")
        return self


class Bundle(_Model):
    """A versioned set of rules."""

    version: int = Field(ge=1, description="Must increase with every deployment.")
    name: str = Field(min_length=1, max_length=200, description="Name of the bundle.")
    description: str | None = Field(default=None, description="What the bundle is for.")
    rules: list[Rule] = Field(max_length=MAX_RULES, description="The rules.")

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        return self


class BundleError(ValueError):
    """The bundle cannot be used; the message says precisely why, `line` and `column` where
    (1-based, when known), `rule` and `field` which rule (from the compiler)."""

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        rule: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.line, self.column = line, column
        self.rule, self.field = rule, field

    def at(self) -> str:
        """``line:column: `` for a message, or nothing when the position is unknown."""
        if self.line is None:
            return ""
        return f"{self.line}:{self.column}: " if self.column else f"{self.line}: "


def _where(data: Any, loc: tuple[Any, ...]) -> str:
    """A validation location as a person says it: ``rule 2 (pump-low): when``, items
    counted from 1."""
    head = ""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules = data.get("rules") if isinstance(data, dict) else None
        rule = rules[loc[1]] if isinstance(rules, list) and 0 <= loc[1] < len(rules) else None
        rid = rule.get("id") if isinstance(rule, dict) else None
        head = f"rule {loc[1] + 1}" + (f" ({rid})" if isinstance(rid, str) else "")
        loc = loc[2:]
    rest = ".".join(f"[{p + 1}]" if isinstance(p, int) else str(p) for p in loc)
    rest = rest.replace(".[", "[")
    return f"{head}: {rest}" if head and rest else head or rest


def parse_bundle(text: str | bytes) -> Bundle:
    """Parse and validate a bundle from YAML or JSON text."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BundleError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        source = load_text(text, "bundle", substitute=False)
    except SourceError as exc:
        raise BundleError(exc.message, line=exc.line, column=exc.column) from None
    data: Any = source.data
    if not isinstance(data, dict):
        raise BundleError("a bundle is a mapping with version, name and rules", line=1, column=1)
    try:
        return Bundle.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        pos = source.locate(first["loc"])
        problems = []
        for err in errors[:5]:
            where = _where(data, tuple(err["loc"]))
            problems.append(f"{where}: {describe(err)}" if where else describe(err))
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise BundleError(
            "; ".join(problems) + more,
            line=pos[0] if pos else None,
            column=pos[1] if pos else None,
        ) from None


def locate_rule(text: str, rule_id: str, field: str | None) -> tuple[int, int] | None:
    """Where rule `rule_id`'s `field` (or the rule itself) is in bundle `text`."""
    try:
        source = load_text(text, "bundle", substitute=False)
    except SourceError:
        return None
    rules = source.data.get("rules") if isinstance(source.data, dict) else None
    if not isinstance(rules, list):
        return None
    for i, rule in enumerate(rules):
        if isinstance(rule, dict) and rule.get("id") == rule_id:
            loc: tuple[str | int, ...] = ("rules", i, field) if field else ("rules", i)
            return source.locate(loc)
    return None


def json_schema() -> str:
    """The JSON Schema of bundles (docs/schemas/rule-bundle.schema.json)."""
    return published_schema(Bundle, "rule-bundle")
