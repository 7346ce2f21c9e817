"""Rule cost limits: expressions priced before they compile, and a rule that runs over its
time budget disabled while the others keep firing."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.kernel.records import Reading
from rules._cel import cel
from rules.bundle import BundleError, parse_bundle
from rules.compiler import compile_bundle
from rules.cost import BUDGET, DATA_LIST, MAX_NESTING, CostError, estimate
from rules.engine import RuleEngine
from tests.rules.test_cli import cli

TEN = "[0,1,2,3,4,5,6,7,8,9]"


def nested(depth: int, over: str = TEN) -> str:
    """`depth` nested ``.all()`` over `over`, as in the report (seven of them)."""
    head = " ".join(f"{over}.all(x{i}," for i in range(depth))
    return f"{head} {' + '.join(f'x{i}' for i in range(depth))} >= 0" + ")" * depth


def bundle(when: str) -> str:
    return (
        "version: 1\nname: t\nrules:\n"
        "  - id: fine\n    devices: [tank]\n    when: level > 2.0\n    event: {kind: fine}\n"
        f"  - id: costly\n    devices: [tank]\n    when: '{when}'\n    event: {{kind: costly}}\n"
    )


def test_nested_macros_multiply_and_plain_conditions_cost_their_tokens() -> None:
    assert estimate("level > 2.0") == 3
    one, two = estimate(f"{TEN}.all(x, x > 0)"), estimate(nested(2))
    assert 10 < one < 100
    assert two > 9 * one  # the inner macro runs ten times
    assert estimate("points.all(k, points[k] > 0)") > DATA_LIST  # a list from data
    assert estimate("[].all(x, x)") < 20
    # parentheses inside strings are text, not nesting
    assert estimate('name == "a(b[c{" && x > 1') == 7
    assert estimate(nested(3)) <= BUDGET < estimate(nested(4))


def test_the_reported_rule_is_refused_with_its_name_by_validate_sign_and_compile(
    tmp_path: Path,
) -> None:
    path = tmp_path / "heavy.yaml"
    path.write_text(bundle(nested(7)), encoding="utf-8")
    result = cli("rules", "validate", str(path))
    assert result.returncode == 2
    assert "rule costly: when costs about" in result.stderr
    assert "over the budget of 100,000" in result.stderr
    assert "Traceback" not in result.stderr
    key = tmp_path / "k"
    assert cli("keys", "generate", "--id", "k", "--out", str(key)).returncode == 0
    signed = cli("rules", "sign", str(path), "--key", str(key / "k.key"))
    assert signed.returncode == 2
    assert "rule costly" in signed.stderr
    assert not (tmp_path / "heavy.yaml.sig").exists()
    # the node's deploy compiles with the same check (rules/deploy.py)
    with pytest.raises(BundleError, match="rule costly: when costs about"):
        compile_bundle(parse_bundle(bundle(nested(4))))
    compile_bundle(parse_bundle(bundle(nested(3))))  # within the budget


def test_deep_nesting_is_refused_before_the_cel_parser_sees_it() -> None:
    deep = "(" * 900 + "1" + ")" * 900  # within the 2000 characters a condition may have
    with pytest.raises(BundleError, match=f"nests deeper than {MAX_NESTING}"):
        compile_bundle(parse_bundle(bundle(deep)))
    with pytest.raises(BundleError, match="unbalanced"):
        compile_bundle(parse_bundle(bundle("(1))")))


def test_a_rule_over_its_time_budget_is_disabled_and_reported_the_others_keep_firing() -> None:
    # statically cheap (a data list counts as 32), but this device has 600 points:
    # 360,000 steps per evaluation at run time
    rules = """
  - id: slow
    devices: [board]
    when: points.all(a, points.all(b, points[a] >= 0.0 && points[b] >= 0.0)) && p0 > 1.0
    event: {kind: slow}
  - id: quick
    devices: [board]
    when: p0 > 1.0
    event: {kind: quick}
"""
    e = RuleEngine(node="n1", eval_budget=0.02)
    e.swap(compile_bundle(parse_bundle(f"version: 1\nname: t\nrules:\n{rules}")))
    for i in range(1, 600):
        e.on_reading(Reading(device="board", point=f"p{i}", value=float(i)), now=0)
    e.take_events()
    assert "slow" in e.disabled
    evaluations = e.stats.evaluations
    for t in range(1, 6):
        e.on_reading(Reading(device="board", point="p0", value=float(t % 2) * 5), now=t)
    events = e.take_events()
    assert [ev.kind for ev in events].count("quick") == 3  # t = 1, 3, 5
    assert not any(ev.kind == "slow" for ev in events)
    assert e.stats.evaluations - evaluations == 5  # only `quick`: `slow` no longer runs
    assert "disabled until a bundle changes it" in e.disabled["slow"]
    assert e.stats.disabled == 1


def test_the_disabling_is_reported_once_as_rule_error() -> None:
    rules = """
  - id: slow
    devices: [board]
    when: points.all(a, points.all(b, points[a] >= 0.0))
    event: {kind: slow}
"""
    e = RuleEngine(node="n1", eval_budget=0.01)
    e.swap(compile_bundle(parse_bundle(f"version: 1\nname: t\nrules:\n{rules}")))
    for i in range(800):
        e.on_reading(Reading(device="board", point=f"p{i}", value=1.0), now=0)
    (error,) = [ev for ev in e.take_events() if ev.kind == "rule.error"]
    assert error.data["disabled"] is True
    assert error.rule == "slow"
    assert "over the budget of 10 ms" in error.message
    # a new bundle with the rule changed runs it again
    e.swap(
        compile_bundle(
            parse_bundle(
                "version: 2\nname: t\nrules:\n  - id: slow\n    devices: [board]\n"
                "    when: p1 > 0.0\n    event: {kind: slow}\n"
            )
        )
    )
    assert e.disabled == {}


@settings(deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_priced_or_refused_never_crashes(source: str) -> None:
    with contextlib.suppress(CostError):
        estimate(source)


@settings(deadline=None)
@given(
    st.recursive(
        st.sampled_from(["x", "1", "[1,2]", "points", '"s("', "true"]),
        lambda inner: st.one_of(
            st.tuples(inner, inner).map(lambda p: f"({p[0]} + {p[1]})"),
            st.tuples(inner, inner).map(lambda p: f"[{p[0]}, {p[1]}].all(v, {p[1]} == v)"),
            inner.map(lambda e: f"{e}.exists(w, w == {e})"),
        ),
        max_leaves=12,
    )
)
def test_the_estimate_is_safe_for_what_cel_compiles(expr: str) -> None:
    """Whatever the estimate admits, CEL parses without trouble; whatever is refused is
    refused with a reason."""
    try:
        estimate(expr)
    except CostError:
        return
    cel.compile(expr)
