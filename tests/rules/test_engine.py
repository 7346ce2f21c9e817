"""The rule engine with time under control (every call says what time it is)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.bus import Bus
from gateway.kernel.records import Detection, Event, Quality, Reading, ReadingBatch, Severity
from gateway.rules_host import RuleHost
from rules.bundle import parse_bundle
from rules.compiler import compile_bundle
from rules.engine import RuleEngine


def engine(yaml_rules: str, **kw: Any) -> RuleEngine:
    e = RuleEngine(node="n1", **kw)
    e.swap(compile_bundle(parse_bundle(f"version: 1\nname: t\nrules:\n{yaml_rules}")))
    return e


def feed(e: RuleEngine, device: str, now: float, **points: Any) -> list[Event]:
    for point, value in points.items():
        e.on_reading(Reading(device=device, point=point, value=value), now=now)
    e.run_timers(now)
    return e.take_events()


MANHOLE = """
  - id: lid-open
    devices: ["manhole-*"]
    when: lid_open
    severity: critical
    alarm: {kind: manhole_open, message: "lid of {device} open, tilt {tilt}"}
"""


def test_alarm_raises_once_and_clears_with_its_own_event() -> None:
    e = engine(MANHOLE)
    assert feed(e, "manhole-1", 0, tilt=0.5, lid_open=False) == []
    (raised,) = feed(e, "manhole-1", 1, tilt=14.0, lid_open=True)
    assert raised.kind == "alarm.manhole_open"
    assert raised.severity is Severity.CRITICAL
    assert raised.message == "lid of manhole-1 open, tilt 14"
    assert raised.data["state"] == "raised"
    assert raised.rule == "lid-open"
    assert feed(e, "manhole-1", 2, lid_open=True, tilt=15.0) == []  # still open: no repeat
    (cleared,) = feed(e, "manhole-1", 3, lid_open=False)
    assert cleared.kind == "alarm.manhole_open"
    assert cleared.data["state"] == "cleared"
    assert cleared.severity is Severity.INFO
    # another device matched by the pattern has its own instance; others are ignored
    assert len(feed(e, "manhole-2", 4, lid_open=True)) == 1
    assert feed(e, "hydrant-7", 4, lid_open=True) == []


def test_for_fires_only_when_the_condition_holds_long_enough_even_without_new_data() -> None:
    e = engine("""
  - id: dust
    devices: [site-dust]
    when: pm10 > 100
    for: 10m
    alarm: {kind: dust}
""")
    assert feed(e, "site-dust", 0, pm10=150) == []
    assert feed(e, "site-dust", 300, pm10=50) == []  # dipped: the clock restarts
    assert feed(e, "site-dust", 310, pm10=160) == []
    assert feed(e, "site-dust", 900, pm10=170) == []
    assert e.next_timer() == 910
    e.run_timers(909.9)
    assert e.take_events() == []
    e.run_timers(910)  # no reading needed: the timer fires it
    (raised,) = e.take_events()
    assert raised.kind == "alarm.dust"


def test_hysteresis_and_clear_for() -> None:
    e = engine("""
  - id: flood
    devices: [river]
    when: level > 3.0
    clear_when: level < 2.8
    clear_for: 60s
    alarm: {kind: flood}
""")
    assert len(feed(e, "river", 0, level=3.1)) == 1
    assert feed(e, "river", 10, level=2.9) == []  # below on-threshold, above off
    assert feed(e, "river", 20, level=2.7) == []  # clear condition starts holding
    assert feed(e, "river", 50, level=2.75) == []
    (cleared,) = feed(e, "river", 80, level=2.6)
    assert cleared.data["state"] == "cleared"


def test_rate_of_change_and_window_average() -> None:
    e = engine("""
  - id: rising
    devices: [river]
    let:
      rise: {fn: rate, point: level, over: 60s}
      mean: {fn: avg, point: level, over: 60s}
    when: rise > 0.01 && mean > 1.0
    event: {kind: river_rising, message: "rising {rise} m/s"}
""")
    events = []
    for t in range(0, 61, 10):
        events += feed(e, "river", t, level=1.0 + 0.005 * t)  # 0.005 m/s: too slow
    assert events == []
    for t in range(70, 131, 10):
        events += feed(e, "river", t, level=1.3 + 0.02 * (t - 60))
    assert [ev.kind for ev in events] == ["river_rising"]
    assert events[0].data["rise"] > 0.01


def test_tumbling_window_uses_the_last_complete_window() -> None:
    e = engine("""
  - id: noisy
    devices: [site]
    let: {loud: {fn: max, point: noise, over: 60s, window: tumbling}}
    when: loud > 80
    event: {kind: noise}
""")
    assert feed(e, "site", 10, noise=90) == []  # the first window is not complete yet
    assert feed(e, "site", 50, noise=60) == []
    assert len(feed(e, "site", 61, noise=60)) == 1  # window [0, 60) had 90


def test_detections_within_time_and_radius() -> None:
    here = {"lat": -30.0346, "lon": -51.2177, "valid": True}
    e = engine(
        """
  - id: pothole-cluster
    trigger: detection
    devices: [front-cam]
    labels: [pothole]
    let: {near: {fn: detections, labels: [pothole], within: 5m, radius_m: 50}}
    when: near >= 3
    throttle: 10m
    event: {kind: pothole_cluster, message: "{near} potholes within 50 m"}
""",
        locate=lambda: here,
    )

    def detect(now: float, label: str = "pothole") -> list[Event]:
        e.on_detection(
            Detection(
                camera="front-cam",
                model="road",
                label=label,
                score=0.9,
                box=(0, 0, 10, 10),
                frame_id="f1",
            ),
            now=now,
        )
        return e.take_events()

    assert detect(0) == []
    assert detect(1, "crack") == []
    assert detect(2) == []
    (event,) = detect(3)
    assert event.message == "3 potholes within 50 m"
    assert event.snapshot == "f1"
    assert event.data["detection"]["label"] == "pothole"
    assert event.location == here
    # far away (200 m east), the earlier ones no longer count
    here.update(lon=-51.2156)
    assert detect(20) == []


def test_throttle_and_rearm() -> None:
    e = engine("""
  - id: tamper
    devices: [h]
    when: tamper
    rearm: 60s
    alarm: {kind: tamper}
  - id: ping
    devices: [h]
    when: open
    throttle: 100s
    event: {kind: opened}
""")
    assert len(feed(e, "h", 0, tamper=True)) == 1
    assert len(feed(e, "h", 1, tamper=False)) == 1  # cleared
    assert feed(e, "h", 30, tamper=True) == []  # not re-armed yet
    assert feed(e, "h", 31, tamper=False) == []
    assert len(feed(e, "h", 100, tamper=True)) == 1
    assert len(feed(e, "h", 0, open=True)) == 1
    assert feed(e, "h", 1, open=False) == []
    assert feed(e, "h", 50, open=True) == []  # throttled
    assert feed(e, "h", 51, open=False) == []
    assert len(feed(e, "h", 150, open=True)) == 1
    assert e.stats.suppressed == 2


def test_only_rules_reading_the_changed_point_are_evaluated() -> None:
    rules = "".join(
        f"""
  - id: r{i}
    devices: [d{i % 10}]
    when: p{i % 7} > 100
    event: {{kind: k{i}}}
"""
        for i in range(1000)
    )
    e = engine(rules)
    feed(e, "d3", 0, p5=1.0)
    # rules for device d3 reading p5: i % 10 == 3 and i % 7 == 5 -> 14 of 1000
    assert e.stats.evaluations == 14


def test_missing_data_is_just_false_not_an_error() -> None:
    e = engine("""
  - id: needs-both
    devices: [d]
    when: a > 1 && b > 1
    event: {kind: both}
""")
    assert feed(e, "d", 0, a=5) == []  # b not reported yet
    assert e.stats.missing == 1
    assert e.stats.errors == 0
    (fired,) = feed(e, "d", 1, b=5)
    assert fired.kind == "both"


def test_rule_errors_are_events_once() -> None:
    e = engine("""
  - id: typo
    devices: [d]
    when: a > "high"
    event: {kind: never}
""")
    events = feed(e, "d", 0, a=5) + feed(e, "d", 1, a=6)
    assert [ev.kind for ev in events] == ["rule.error"]
    assert "rule typo: evaluation failed" in events[0].message
    assert e.stats.errors == 2


def test_swap_keeps_state_of_unchanged_rules_only() -> None:
    e = engine(
        MANHOLE
        + """
  - id: dusty
    devices: [dust]
    when: pm10 > 100
    alarm: {kind: dust}
"""
    )
    assert len(feed(e, "manhole-1", 0, lid_open=True)) == 1
    assert len(feed(e, "dust", 0, pm10=150)) == 1
    changed = parse_bundle(
        "version: 2\nname: t\nrules:\n"
        + MANHOLE
        + """
  - id: dusty
    devices: [dust]
    when: pm10 > 120
    alarm: {kind: dust}
"""
    )
    e.swap(compile_bundle(changed))
    # changed condition: fresh state, evaluated against the current values at once
    (again,) = e.take_events()
    assert again.kind == "alarm.dust"
    assert again.data["bundle"] == 2
    # unchanged rule: the alarm is still raised, no second raise
    assert feed(e, "manhole-1", 1, lid_open=True) == []
    assert feed(e, "dust", 1, pm10=150) == []


def test_write_action_and_dry_run() -> None:
    e = engine(
        """
  - id: fan
    devices: [site-dust]
    when: pm10 > 100
    event: {kind: fan_on}
    write: {point: fan_on, value: true}
"""
    )
    feed(e, "site-dust", 0, pm10=150)
    assert e.take_writes() == [("site-dust", "fan_on", True, "fan")]
    bad = compile_bundle(
        parse_bundle("""
version: 2
name: t
rules:
  - id: broken
    devices: [site-dust]
    when: pm10 + "x" > 1
    event: {kind: x}
""")
    )
    with pytest.raises(ValueError, match="rule broken on site-dust"):
        e.dry_run(bad)
    good = compile_bundle(
        parse_bundle("""
version: 2
name: t
rules:
  - {id: high, devices: [site-dust], when: pm10 > 100, event: {kind: x}}
  - {id: unknown-point, devices: [site-dust], when: pm99 > 1, event: {kind: x}}
""")
    )
    assert e.dry_run(good) == [
        {"rule": "high", "device": "site-dust", "holds": True},
        {"rule": "unknown-point", "device": "site-dust", "holds": None, "missing": "pm99"},
    ]
    assert e.stats.errors == 0


def test_published_bundle_schema_is_current_and_accepts_the_example() -> None:
    from pathlib import Path

    import yaml
    from jsonschema import Draft202012Validator

    from rules.bundle import json_schema

    root = Path(__file__).resolve().parents[2]
    published = (root / "docs" / "schemas" / "rule-bundle.schema.json").read_text()
    assert published == json_schema(), "regenerate docs/schemas/rule-bundle.schema.json"
    schema = json.loads(published)
    Draft202012Validator.check_schema(schema)
    example = yaml.safe_load((root / "rules" / "examples" / "city.yaml").read_text())
    assert list(Draft202012Validator(schema).iter_errors(example)) == []


async def test_a_poll_no_rule_reads_is_taken_in_without_waking_the_rule_host() -> None:
    """Through the node's rule host on a real bus: a poll of a device no rule reads only
    updates the values (in the publisher's call, never queued); a poll of a device a rule
    reads is evaluated, all its points measured together."""

    def poll(device: str, lid: bool, tilt: float) -> ReadingBatch:
        return ReadingBatch(device=device, points=("lid_open", "tilt"), values=(lid, tilt),
                            units=(None, "deg"), qualities=(Quality.GOOD,) * 2)  # fmt: skip

    e = engine(MANHOLE)
    bus = Bus()
    host = RuleHost(e, bus)
    with bus.subscribe("events", maxsize=100, kinds=(Event,)) as events:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(host.run(lambda: None), name="test.rules")
            await asyncio.sleep(0.01)
            (rules_sub,) = [s for s in bus._subs if s.name == "rules"]
            await bus.publish(poll("pump-1", lid=True, tilt=3.0))
            assert rules_sub.depth == 0 and rules_sub.delivered == 0  # not queued at all
            assert e.values["pump-1"] == {"lid_open": True, "tilt": 3.0}
            await bus.publish(poll("manhole-1", lid=True, tilt=4.5))
            alarm = await asyncio.wait_for(events.get(), 5)
            task.cancel()
    assert rules_sub.delivered == 1
    assert isinstance(alarm, Event) and alarm.kind == "alarm.manhole_open"
    assert alarm.message == "lid of manhole-1 open, tilt 4.5"  # both points of the poll
