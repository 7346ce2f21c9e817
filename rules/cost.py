"""A static estimate of what one evaluation of a CEL expression costs, before it is compiled.

CEL has no loops, but its list macros (``all``, ``exists``, ``exists_one``, ``map``,
``filter``) run their body once per element, and nested macros multiply: seven nested
``.all()`` over 10-element lists are 10 million steps, seconds of a blocked event loop per
reading. The estimate counts each token of the expression once per time it runs: a token
inside macros runs (size of each enclosing macro's list) times; the size is the literal
list's element count when the macro runs over a list literal, and `DATA_LIST` for a list
that comes from data (detections, a map's keys). Expressions are also bounded in nesting,
which keeps a pathological one (thousands of parentheses) away from the CEL parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
DATA_LIST = 32  # assumed length of a list from data
# steps per evaluation: 2.5 ms on the development machine (25 ns a step, measured with
# nested list macros), several times that on a Raspberry Pi-class core
BUDGET = 100_000
MAX_NESTING = 32  # of parentheses, brackets and braces
MAX_LENGTH = 4096  # characters in one expression

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>[rRbB]{0,2}(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
        |'(?:\\.|[^\\'\n])*'|"(?:\\.|[^\\"\n])*"))
  | (?P<number>\d[\w.]*)
  | (?P<name>[A-Za-z_]\w*)
  | (?P<open>[(\[{])
  | (?P<close>[)\]}])
  | (?P<comma>,)
  | (?P<dot>\.)
  | (?P<op>[^\s\w()\[\]{},.'"]+)
    """,
    re.VERBOSE | re.DOTALL,
)


class CostError(ValueError):
    """An expression is too expensive or too deeply nested to run on a node."""


@dataclass
class _Frame:
    close: str
    multiplier: int
    elements: int = 0  # top-level elements so far (list literals)
    empty: bool = True


def estimate(source: str) -> int:
    """The estimated steps of one evaluation of `source`; `CostError` when it nests too
    deeply or is too long. Does not check that the expression is valid CEL."""
    if len(source) > MAX_LENGTH:
        raise CostError(f"is {len(source)} characters long; the limit is {MAX_LENGTH}")
    counter = _Counter()
    for match in _TOKEN.finditer(source):
        kind = match.lastgroup or ""
        if kind != "space" and counter.add(kind, match.group()) > BUDGET * 1000:
            return counter.cost  # far past the budget: no need to count on
    if len(counter.stack) > 1:
        raise CostError(f"has an unclosed {_opening(counter.stack[-1].close)!r}")
    return counter.cost


class _Counter:
    """Token by token: the nesting, the multiplier of each level, the cost so far."""

    def __init__(self) -> None:
        self.stack = [_Frame("", 1)]
        self.cost = 0
        self.last_list: int | None = None  # element count of the list literal just closed
        self.receiver: int | None = None  # size of the list literal before the last dot
        self.pending: int | None = None  # a macro's list size, for the "(" that follows
        self.prev = ""  # kind of the previous token

    def add(self, kind: str, text: str) -> int:
        frame = self.stack[-1]
        if kind == "open":
            self._open(frame, text)
        elif kind == "close":
            if len(self.stack) == 1 or frame.close != text:
                raise CostError(f"has an unbalanced {text!r}")
            self.stack.pop()
            closed_list = frame.elements + (0 if frame.empty else 1)
            self.last_list = closed_list if text == "]" else None
        elif kind == "comma":
            frame.elements += 1
        else:
            frame.empty = False
        self.pending = None
        if kind == "dot":
            self.receiver = self.last_list if self.prev == "close]" else None
        elif kind == "name" and text in MACROS and self.prev == "dot":
            self.pending = self.receiver if self.receiver is not None else DATA_LIST
        self.cost += self.stack[-1].multiplier
        self.prev = f"close{text}" if kind == "close" else kind
        return self.cost

    def _open(self, frame: _Frame, text: str) -> None:
        if len(self.stack) > MAX_NESTING:
            raise CostError(f"nests deeper than {MAX_NESTING}")
        frame.empty = False
        multiplier = frame.multiplier
        if text == "(" and self.pending is not None:
            multiplier *= max(self.pending, 1)
        self.stack.append(_Frame({"(": ")", "[": "]", "{": "}"}[text], multiplier))


def _opening(close: str) -> str:
    return {")": "(", "]": "[", "}": "{"}[close]


def check(source: str) -> int:
    """`estimate`, refused (`CostError`) above `BUDGET`."""
    cost = estimate(source)
    if cost > BUDGET:
        raise CostError(
            f"costs about {cost:,} steps per evaluation, over the budget of {BUDGET:,} "
            f"(nested list macros multiply: each runs its body once per element; lists from "
            f"data count as {DATA_LIST})"
        )
    return cost
