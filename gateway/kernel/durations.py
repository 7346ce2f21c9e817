"""Durations in config files: ``500ms``, ``30s``, ``10m``, ``2h``, ``7d`` or seconds."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

DURATION_TEXT = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"


def parse_duration(value: object) -> object:
    """'500ms', '30s', '10m', '2h', '7d' or a number of seconds -> seconds (float)."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration (e.g. 500ms, 30s, 10m, 2h, 7d)")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Duration = Annotated[
    float,
    BeforeValidator(
        parse_duration,
        json_schema_input_type=float | Annotated[str, Field(pattern=DURATION_TEXT)],
    ),
]
"""A pydantic field type: seconds as a float, written as a number or with a unit."""
