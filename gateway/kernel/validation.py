"""Validation errors (pydantic's) in the product's words, for config files and bundles."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

_WORDS = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be text",
    "list_type": "must be a list",
    "dict_type": "must be a mapping (key: value)",
    "model_type": "must be a mapping (key: value)",
    "model_attributes_type": "must be a mapping (key: value)",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "string_too_short": "must have at least {min_length} character(s)",
    "string_too_long": "must have at most {max_length} characters",
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} items",
    "string_pattern_mismatch": "must match the pattern {pattern}",
    "literal_error": "must be {expected}",
    "enum": "must be {expected}",
}


_PREFIXES = {"value_error": "Value error, ", "assertion_error": "Assertion failed, "}


def describe(err: Mapping[str, Any]) -> str:
    """One pydantic error (from ``ValidationError.errors()``) as a short message, with the
    offending value when it is a scalar."""
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (not allowed here; check spelling and indentation)"
    if kind == "missing":
        return "required key is missing"
    if kind in _PREFIXES:  # our own checks: the message is already in the product's words
        return str(err["msg"]).removeprefix(_PREFIXES[kind])
    msg = str(err["msg"])
    words = _WORDS.get(kind)
    if words is not None:
        with contextlib.suppress(KeyError, IndexError):
            msg = words.format(**err.get("ctx", {}))
    inp = err.get("input")
    if isinstance(inp, str | int | float | bool):
        msg += f" (got {inp!r})"
    return msg


def redact(message: str, secrets: Sequence[str]) -> str:
    """`message` with every substituted secret replaced by ``***``."""
    for secret in secrets:
        if len(secret) >= 3:
            message = message.replace(secret, "***")
    return message
